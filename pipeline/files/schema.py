"""The schema of the local sink's vectors table (the table and the legacy layout's reader share it)."""

from __future__ import annotations

import pyarrow as pa


def vector_schema(dimension: int) -> pa.Schema:
    """The schema of the vectors table."""
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("episode_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dimension), nullable=False),
            pa.field("text_sha256", pa.string(), nullable=False),
            pa.field("model_fingerprint", pa.string(), nullable=False),
            pa.field("instruction", pa.string(), nullable=False),
            pa.field("embedded_at", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("run_id", pa.string(), nullable=False),
        ]
    )
