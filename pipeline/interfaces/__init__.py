"""The interfaces every technology implements: source, sink, checkpoint store, executor."""
