"""Executors: where the model runs (in this process, or on Modal GPUs)."""
