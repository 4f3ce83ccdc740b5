"""What goes over ``.map()``: batch payloads out, vectors and container timings back.

Both sides use it: the client (:mod:`pipeline.modal.executor`) and the GPU class in
``jobs/modal_app.py``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np

from pipeline.modal.gpu import GpuFault, classify_failure

log = logging.getLogger(__name__)


def batch_payload(batch_id: str, chunk_ids: list[str], texts: list[str]) -> dict[str, Any]:
    """One ``.map()`` input: plain lists, so any Modal client version can send it."""
    return {"batch_id": batch_id, "chunk_ids": list(chunk_ids), "texts": list(texts)}


def payload_bytes(payload: dict[str, Any]) -> int:
    """Rough serialized size of a payload (UTF-8 text plus ids)."""
    return sum(len(t.encode("utf-8", "surrogatepass")) + 8 for t in payload["texts"]) + sum(
        len(c) + 8 for c in payload["chunk_ids"]
    )


def embed_payload(
    embedder: Any,
    payload: dict[str, Any],
    load_s: float = 0.0,
    *,
    boot_s: float = 0.0,
    device_name: str = "",
) -> dict[str, Any]:
    """The container side of one batch: run the shared embedder, return the wire result.

    ``load_s`` and ``boot_s`` are the container's start-up (model load; start-up beyond
    it), sent once, with its first batch. ``device_name`` is what CUDA calls the device
    (the client refuses results from any other GPU type than the configured one).

    Never raises for a bad batch (an out-of-memory error, a tokenizer crash): the error
    comes back with the batch id, so the client knows which batch to split. A CUDA or
    driver error that is not out-of-memory raises :class:`GpuFault`: the container's GPU
    is broken, and the container must leave rather than fail every batch that follows.
    """
    batch_id = str(payload.get("batch_id", ""))
    chunk_ids = list(payload.get("chunk_ids", []))
    texts = list(payload.get("texts", []))
    result: dict[str, Any] = {
        "batch_id": batch_id,
        "chunk_ids": chunk_ids,
        "fingerprint": embedder.fingerprint,
        "device": str(getattr(embedder, "device", "")),
        "device_name": device_name,
        "container": os.environ.get("MODAL_TASK_ID", f"pid-{os.getpid()}"),
        "load_s": float(load_s),
        "boot_s": float(boot_s),
        "compute_s": 0.0,
        "fp32_retries": 0,
        "failed": {},
        "vectors": b"",
        "dim": int(embedder.cfg.dimension),
        "error": None,
    }
    if len(chunk_ids) != len(texts):
        result["error"] = f"payload has {len(chunk_ids)} chunk ids but {len(texts)} texts"
        return result
    start = time.perf_counter()
    try:
        out = embedder.embed(texts)
    except Exception as exc:  # reported per batch: the client splits it
        if classify_failure(exc) == "fatal":
            raise GpuFault(f"batch {batch_id}: {type(exc).__name__}: {exc}"[:2000]) from exc
        result["compute_s"] = time.perf_counter() - start
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        _free_device_memory()
        return result
    vectors = np.ascontiguousarray(out.vectors, dtype="<f4")
    resolved = getattr(embedder, "precision", None)
    result.update(
        precision=resolved.label if resolved else "",
        precision_reason=resolved.describe() if resolved else "",
        vectors=vectors.tobytes(),
        dim=int(vectors.shape[1]) if vectors.ndim == 2 else int(embedder.cfg.dimension),
        compute_s=float(out.compute_s),
        fp32_retries=int(out.fp32_retries),
        failed={chunk_ids[i]: reason for i, reason in out.failed.items()},
    )
    return result


def _free_device_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # best effort after an OOM
        pass


def decode_vectors(result: dict[str, Any], rows: int, dim: int) -> np.ndarray:
    """The float32 ``(rows, dim)`` array in a result, or ``ValueError`` if malformed."""
    raw = result.get("vectors")
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise ValueError("result has no vector bytes")
    if int(result.get("dim", dim)) != dim:
        raise ValueError(f"container returned {result.get('dim')}-dim vectors, config says {dim}")
    if len(raw) != rows * dim * 4:
        raise ValueError(f"result holds {len(raw)} bytes, expected {rows}x{dim} float32")
    return np.frombuffer(bytes(raw), dtype="<f4").reshape(rows, dim).astype(np.float32, copy=True)
