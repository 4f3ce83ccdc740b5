"""The fan-out: batches out through ``.map()``, results back, failed batches split and retried."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import PodembedError, TargetError
from pipeline.modal.credentials import modal_error
from pipeline.modal.options import EMBEDDER_CLASS, PAYLOAD_LIMIT_BYTES, ModalOptions
from pipeline.modal.stream import InputStream, MapFn
from pipeline.modal.wire import batch_payload, decode_vectors, payload_bytes
from pipeline.records import Batch, BatchResult

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    """A batch of the runner, answered whole or (after a failure) in halves."""

    batch: Batch
    vectors: np.ndarray
    outstanding: set[str]
    failed: dict[str, str] = field(default_factory=dict)
    compute_s: float = 0.0
    load_s: float = 0.0
    fp32_retries: int = 0
    precision: str = ""
    precision_reason: str = ""

    def result(self) -> BatchResult:
        return BatchResult(
            batch_id=self.batch.batch_id,
            chunk_ids=self.batch.chunk_ids,
            vectors=self.vectors,
            failed=self.failed,
            compute_s=self.compute_s,
            load_s=self.load_s,
            fp32_retries=self.fp32_retries,
            precision=self.precision,
            precision_reason=self.precision_reason,
        )


@dataclass(slots=True)
class _Part:
    """One ``.map()`` input: a whole batch (first pass) or a half of a failed one (retry)."""

    part_id: str
    batch_id: str
    rows: list[int]
    payload: dict[str, Any]
    error: str = ""  # why it failed, once it has


class Fanout:
    """The state of one ``embed()`` call: what was sent, what came back, what failed."""

    def __init__(
        self, map_fn: MapFn, options: ModalOptions, fingerprint: str, dim: int, containers: set[str]
    ) -> None:
        self.map_fn = map_fn
        self.options = options
        self.expected = fingerprint
        self.dim = dim
        self.containers = containers  # Modal task ids that answered (the executor's set)
        self.pending: dict[str, _Pending] = {}
        self.parts: dict[str, _Part] = {}
        self.lock = threading.Lock()  # register() runs on the feeder thread
        self.successes = 0

    # -- bookkeeping
    def register(self, batch: Batch) -> dict[str, Any]:
        payload = batch_payload(batch.batch_id, batch.chunk_ids, batch.texts)
        size = payload_bytes(payload)
        if size > PAYLOAD_LIMIT_BYTES:
            log.warning(
                "batch %s is %.1f MiB, above Modal's 2 MiB argument limit: it goes "
                "through blob storage (lower batching.token_budget)",
                batch.batch_id,
                size / 2**20,
            )
        rows = list(range(len(batch.chunk_ids)))
        with self.lock:
            self.pending[batch.batch_id] = _Pending(
                batch=batch,
                vectors=np.zeros((len(rows), self.dim), dtype=np.float32),
                outstanding={batch.batch_id},
            )
            self.parts[batch.batch_id] = _Part(batch.batch_id, batch.batch_id, rows, payload)
        return payload

    def unanswered(self) -> list[_Part]:
        with self.lock:
            return [
                p
                for p in self.parts.values()
                if p.batch_id in self.pending and p.part_id in self.pending[p.batch_id].outstanding
            ]

    def complete(self, batch_id: str) -> Iterator[BatchResult]:
        owner = self.pending.get(batch_id)
        if owner is not None and not owner.outstanding:
            with self.lock:
                del self.pending[batch_id]
            yield owner.result()

    # -- one output
    def settle(self, out: Any) -> tuple[_Part | None, str | None]:
        """Apply one output: ``(part, None)`` done, ``(part or None, reason)`` failed,
        ``(None, None)`` ignored (a duplicate)."""
        if isinstance(out, BaseException):
            return None, f"{type(out).__name__}: {out}"[:1000]
        if not isinstance(out, dict) or "batch_id" not in out:
            return None, f"malformed output ({type(out).__name__})"
        with self.lock:
            part = self.parts.get(str(out["batch_id"]))
            owner = self.pending.get(part.batch_id) if part else None
        if part is None or owner is None or part.part_id not in owner.outstanding:
            log.warning("Modal: result for unknown or settled batch %s ignored", out.get("batch_id"))
            return None, None
        if out.get("container"):
            self.containers.add(str(out["container"]))
        fingerprint = out.get("fingerprint")
        if fingerprint and fingerprint != self.expected:
            raise TargetError(
                f"Modal: the deployed app embeds with model fingerprint {fingerprint} but this "
                f"config expects {self.expected}. Redeploy with this config (`modal deploy "
                "jobs/modal_app.py`; PODEMBED_CONFIG names the config it ships) or run with the "
                "config it was deployed with."
            )
        # Device time was spent whether or not the batch worked: it is billed.
        owner.compute_s += float(out.get("compute_s") or 0.0)
        owner.load_s += float(out.get("load_s") or 0.0)
        owner.outstanding.discard(part.part_id)
        if out.get("error"):
            return part, str(out["error"])
        try:
            vectors = decode_vectors(out, len(part.rows), self.dim)
            if list(out.get("chunk_ids", part.payload["chunk_ids"])) != part.payload["chunk_ids"]:
                raise ValueError("chunk ids differ from the batch sent")
        except ValueError as exc:
            return part, f"malformed result: {exc}"
        owner.vectors[part.rows] = vectors
        owner.fp32_retries += int(out.get("fp32_retries") or 0)
        if out.get("precision"):
            owner.precision = str(out["precision"])
            owner.precision_reason = str(out.get("precision_reason") or "")
        for cid, reason in dict(out.get("failed") or {}).items():
            owner.failed[str(cid)] = str(reason)
        return part, None

    @staticmethod
    def blame(lost: list[_Part], exceptions: list[str]) -> None:
        """Parts the stream never answered failed with (one of) the stream's exceptions."""
        if len(exceptions) == 1:
            reason = exceptions[0]
        elif exceptions:
            uniq = list(dict.fromkeys(exceptions))
            reason = "one of: " + " | ".join(uniq[:3]) + (" | ..." if len(uniq) > 3 else "")
        else:
            reason = "no result came back"
        for part in lost:
            part.error = reason

    def check_breaker(self, failures: int, first: str) -> None:
        limit = self.options.abort_after_failures
        if limit and self.successes == 0 and failures >= limit:
            raise TargetError(
                f"Modal: the first {failures} batches all failed and none worked ({first}); "
                "stopping without dead-lettering anything. Check the deployment (`modal app "
                f"logs {self.options.app_name}`; are the weights in the Volume "
                f"{self.options.weights_volume!r}?), then rerun the same command to resume."
            )

    # -- the two passes
    def run(self, batches: Iterable[Batch]) -> Iterator[BatchResult]:
        stream = InputStream(batches, self.register, self.options.max_in_flight)
        failed: list[_Part] = []
        exceptions: list[str] = []
        try:
            for out in self._map(stream, "map"):
                stream.release()
                part, error = self.settle(out)
                if error is None:
                    if part is not None:
                        self.successes += 1
                        yield from self.complete(part.batch_id)
                    continue
                if part is None:
                    exceptions.append(error)  # which batch it was is known when the stream ends
                else:
                    part.error = error
                    failed.append(part)
                self.check_breaker(len(failed) + len(exceptions), error)
            if stream.error is not None:
                raise stream.error
        finally:
            stream.close()
        lost = self.unanswered()
        self.blame(lost, exceptions)
        for part in lost:
            self.pending[part.batch_id].outstanding.discard(part.part_id)
        failed.extend(lost)
        if failed:
            self.check_breaker(len(failed), failed[0].error)
            yield from self.retry_in_halves(failed)
        for batch_id in list(self.pending):  # never reached unless a part went astray
            owner = self.pending[batch_id]
            for cid in owner.batch.chunk_ids:
                owner.failed.setdefault(cid, "Modal: no result came back for this batch")
            owner.outstanding.clear()
            yield from self.complete(batch_id)

    def retry_in_halves(self, failed: list[_Part]) -> Iterator[BatchResult]:
        halves: list[_Part] = []
        for part in failed:
            owner = self.pending[part.batch_id]
            mid = (len(part.rows) + 1) // 2
            pieces = [part.rows[:mid], part.rows[mid:]] if len(part.rows) > 1 else [part.rows]
            log.warning(
                "Modal: batch %s failed (%s); retrying it in %d part(s)",
                part.part_id,
                part.error,
                len(pieces),
            )
            for i, rows in enumerate(pieces):
                pid = f"{part.part_id}/{i}"
                ids = [owner.batch.chunk_ids[r] for r in rows]
                texts = [owner.batch.texts[r] for r in rows]
                half = _Part(pid, part.batch_id, rows, batch_payload(pid, ids, texts), error=part.error)
                halves.append(half)
                self.parts[pid] = half
                owner.outstanding.add(pid)
        exceptions: list[str] = []
        for out in self._map([h.payload for h in halves], "retry map"):
            part, error = self.settle(out)
            if error is None:
                if part is not None:
                    yield from self.complete(part.batch_id)
                continue
            if part is None:
                exceptions.append(error)
                continue
            self.dead_letter(part, part.error, error)  # part.error: why the whole batch failed
            yield from self.complete(part.batch_id)
        lost = self.unanswered()
        firsts = {p.part_id: p.error for p in lost}
        self.blame(lost, exceptions)
        for part in lost:
            self.pending[part.batch_id].outstanding.discard(part.part_id)
            self.dead_letter(part, firsts[part.part_id], part.error)
            yield from self.complete(part.batch_id)

    def dead_letter(self, part: _Part, first: str, second: str) -> None:
        owner = self.pending[part.batch_id]
        reason = (f"Modal: batch failed ({first}) and again after splitting it in halves ({second})")[:1000]
        for row in part.rows:
            owner.failed[owner.batch.chunk_ids[row]] = reason

    def _map(self, inputs: Any, what: str) -> Iterator[Any]:
        """``map_fn`` over ``inputs``, unordered, exceptions in the stream; Modal's own
        failures (auth, app not deployed, connection lost) become our errors."""
        try:
            yield from self.map_fn(inputs, order_outputs=False, return_exceptions=True)
        except PodembedError:
            raise
        except Exception as exc:
            mapped = modal_error(exc, self.options, f"class {EMBEDDER_CLASS}")
            if mapped is not None:
                raise mapped from None
            raise TargetError(
                f"Modal: the {what} stopped: {type(exc).__name__}: {exc}. What was embedded "
                "is kept; rerun the same command to resume."
            ) from exc
