"""The run: claiming episodes, preparing and validating chunks, batching, embedding, writing."""
