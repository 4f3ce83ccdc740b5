"""Checkpoint stores: run ledger, shard states, the target lock and dead letters."""
