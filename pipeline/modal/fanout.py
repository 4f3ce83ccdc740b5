"""The fan-out: batches out through ``.map()``, results back, failed batches split and retried.

Memory stays flat however long the run: a batch is held from the moment Modal pulls it
until its result goes back to the runner, and only failed batches wait (with their
texts) for the retry pass. Payloads are built when pulled and never kept here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.engine.split_retry import dead_letter_reason, halves
from pipeline.errors import PodembedError, TargetError
from pipeline.modal.credentials import modal_error
from pipeline.modal.gpu import gpu_matches
from pipeline.modal.options import EMBEDDER_CLASS, PAYLOAD_LIMIT_BYTES, ModalOptions
from pipeline.modal.stream import InputStream, MapFn
from pipeline.modal.wire import batch_payload, decode_vectors, payload_bytes
from pipeline.records import Batch, BatchResult
from pipeline.reporting.cost import Usage, failed_attempt_s

log = logging.getLogger(__name__)

#: How a refused result's reason starts (a container on another GPU type than configured).
WRONG_GPU = "Modal: wrong GPU: "


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
    sent_at: float = 0.0  # when Modal pulled it (monotonic): failed attempts are billed from here
    error: str = ""  # why it failed, once it has


class Fanout:
    """The state of one ``embed()`` call: what is out, what failed, what served it."""

    def __init__(
        self,
        map_fn: MapFn,
        options: ModalOptions,
        fingerprint: str,
        dim: int,
        containers: set[str],
        usage: Usage | None = None,
        clock: Callable[[], float] = time.monotonic,
        spans: dict[str, list[float]] | None = None,
    ) -> None:
        self.map_fn = map_fn
        self.options = options
        self.expected = fingerprint
        self.dim = dim
        self.containers = containers  # Modal task ids that answered (the executor's set)
        # container -> [seconds from ready to its latest answer, compute seconds it reported]
        self.spans = spans if spans is not None else {}
        self.usage = usage if usage is not None else Usage()
        self.clock = clock
        self.pending: dict[str, _Pending] = {}  # batches in flight or failed
        self.parts: dict[str, _Part] = {}  # parts sent and not answered yet
        self.lock = threading.Lock()  # register() runs on the feeder thread
        self.successes = 0

    # -- bookkeeping
    def register(self, batch: Batch) -> dict[str, Any]:
        """A batch Modal pulls: track it, hand over its payload (not kept here)."""
        payload = batch_payload(batch.batch_id, batch.chunk_ids, batch.texts)
        self._warn_if_large(payload)
        with self.lock:
            self.pending[batch.batch_id] = _Pending(
                batch=batch,
                vectors=np.zeros((len(batch.chunk_ids), self.dim), dtype=np.float32),
                outstanding={batch.batch_id},
            )
            rows = list(range(len(batch.chunk_ids)))
            self.parts[batch.batch_id] = _Part(batch.batch_id, batch.batch_id, rows, self.clock())
        return payload

    def register_half(self, half: _Part) -> dict[str, Any]:
        """A half of a failed batch Modal pulls in the retry pass."""
        with self.lock:
            owner = self.pending[half.batch_id]
            half.sent_at = self.clock()
            self.parts[half.part_id] = half
        ids = [owner.batch.chunk_ids[r] for r in half.rows]
        texts = [owner.batch.texts[r] for r in half.rows]
        return batch_payload(half.part_id, ids, texts)

    @staticmethod
    def _warn_if_large(payload: dict[str, Any]) -> None:
        size = payload_bytes(payload)
        if size > PAYLOAD_LIMIT_BYTES:
            log.warning(
                "batch %s is %.1f MiB, above Modal's 2 MiB argument limit: it goes "
                "through blob storage (lower batching.token_budget)",
                payload["batch_id"],
                size / 2**20,
            )

    def take_unanswered(self) -> list[_Part]:
        """Parts the stream never answered, oldest first (the caller settles each)."""
        with self.lock:
            lost = sorted(self.parts.values(), key=lambda p: p.sent_at)
            self.parts.clear()
        return lost

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
            part = self.parts.pop(str(out["batch_id"]), None)
            owner = self.pending.get(part.batch_id) if part else None
        if part is None or owner is None or part.part_id not in owner.outstanding:
            log.warning("Modal: result for unknown or settled batch %s ignored", out.get("batch_id"))
            return None, None
        refused = self._check_origin(out, part)
        # Device time was spent whether or not the batch worked: it is billed.
        owner.compute_s += float(out.get("compute_s") or 0.0)
        owner.load_s += float(out.get("load_s") or 0.0)
        owner.outstanding.discard(part.part_id)
        if refused:
            return part, refused
        if out.get("error"):
            return part, str(out["error"])
        try:
            vectors = decode_vectors(out, len(part.rows), self.dim)
            sent = [owner.batch.chunk_ids[r] for r in part.rows]
            if list(out.get("chunk_ids", sent)) != sent:
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

    def _check_origin(self, out: dict[str, Any], part: _Part) -> str | None:
        """Refuse a result from another model (the run stops) or another device than
        configured (the part fails and is sent again: another container serves it); record
        which device and container served it, and the container's start-up."""
        fingerprint = out.get("fingerprint")
        if fingerprint and fingerprint != self.expected:
            raise TargetError(
                f"Modal: the deployed app embeds with model fingerprint {fingerprint} but this "
                f"config expects {self.expected}. Redeploy with this config (`modal deploy "
                "jobs/modal_app.py`; PODEMBED_CONFIG names the config it ships) or run with the "
                "config it was deployed with."
            )
        container = str(out.get("container") or "")
        name = str(out.get("device_name") or "")
        usage = self.usage
        if container and container not in self.containers:
            self.containers.add(container)
            usage.containers += 1
        usage.boot_s += float(out.get("boot_s") or 0.0)
        if container:
            span = self.spans.setdefault(container, [0.0, 0.0])
            span[0] = max(span[0], float(out.get("alive_s") or 0.0))
            span[1] += float(out.get("compute_s") or 0.0)
        if not gpu_matches(self.options.gpu, name):
            shown = name or "an unnamed device"
            usage.devices[f"{shown} (refused)"] = usage.devices.get(f"{shown} (refused)", 0) + 1
            log.warning(
                "Modal: container %s answered batch %s from %s, not from a %s (executor.gpu): "
                "its vectors are refused and the batch is sent again",
                container or "?",
                part.part_id,
                shown,
                self.options.gpu,
            )
            return (
                f"{WRONG_GPU}container {container or '?'} ran on {shown}, not on a {self.options.gpu} "
                "(executor.gpu); its vectors were refused. Redeploy with this config (`modal deploy "
                "jobs/modal_app.py`): its GPU class refuses to start on another GPU type."
            )
        usage.devices[name] = usage.devices.get(name, 0) + 1
        return None

    def bill_lost(self, lost: list[_Part], exception_times: list[float], ended_at: float) -> None:
        """Attempts that came back as exceptions (a crash, a timeout) carry no timings:
        bill each from its dispatch to its failure, bounded by timeout x attempts. An
        exception names no batch, so the oldest lost part is paired with the first one."""
        limit = self.usage.footprint.attempt_limit_s
        times = sorted(exception_times)
        for i, part in enumerate(lost):
            failed_at = times[i] if i < len(times) else ended_at
            self.usage.failed_s += failed_attempt_s(failed_at - part.sent_at, limit)
            self.usage.failed_attempts += 1

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
        """First pass over the runner's batches, then one retry pass over the failed ones."""
        failed = yield from self._pass(InputStream(batches, self.register, self.options.max_in_flight), "map")
        if failed:
            self.check_breaker(len(failed), failed[0].error)
            yield from self._pass(self._halves(failed), "retry map", final=True)
        for batch_id in list(self.pending):  # never reached unless a part went astray
            owner = self.pending[batch_id]
            for cid in owner.batch.chunk_ids:
                owner.failed.setdefault(cid, "Modal: no result came back for this batch")
            owner.outstanding.clear()
            yield from self.complete(batch_id)

    def _halves(self, failed: list[_Part]) -> InputStream:
        # Every half is outstanding before the first one is sent, so no batch completes
        # half-retried. A half carries its batch's first failure in ``error``; halves are
        # turned into payloads only when Modal pulls them (through the same window).
        retry_parts: list[_Part] = []
        for part in failed:
            pieces = halves(part.part_id, part.rows)
            log.warning(
                "Modal: batch %s failed (%s); retrying it in %d part(s)",
                part.part_id,
                part.error,
                len(pieces),
            )
            owner = self.pending[part.batch_id]
            for pid, rows in pieces:
                owner.outstanding.add(pid)
                retry_parts.append(_Part(pid, part.batch_id, rows, error=part.error))
        return InputStream(retry_parts, self.register_half, self.options.max_in_flight)

    def _pass(
        self, stream: InputStream, what: str, *, final: bool = False
    ) -> Generator[BatchResult, None, list[_Part]]:
        """One ``.map()`` over ``stream``: results yielded as batches complete; returns the
        parts that failed (first pass), or dead-letters them (``final``: the retry pass).

        An exception in the stream names no part: the parts never answered when the
        stream ends are the ones that failed that way."""
        failed: list[_Part] = []
        exceptions: list[str] = []
        exception_times: list[float] = []
        outputs = self._map(stream, what)
        try:
            for out in outputs:
                stream.release()
                part, error = self.settle(out)
                if error is None:
                    if part is not None:
                        self.successes += 1
                        yield from self.complete(part.batch_id)
                    continue
                if part is None:
                    exceptions.append(error)  # which part it was is known when the stream ends
                    exception_times.append(self.clock())
                elif final and error.startswith(WRONG_GPU):
                    # The deployment's fault, not the chunks': stop rather than dead-letter them.
                    raise TargetError(f"{error} The batch was sent again and refused again; stopping.")
                elif final:
                    self.dead_letter(part, part.error, error)  # part.error: why the whole batch failed
                    yield from self.complete(part.batch_id)
                else:
                    part.error = error
                    failed.append(part)
                if not final:
                    self.check_breaker(len(failed) + len(exceptions), error)
            if stream.error is not None:
                raise stream.error
        finally:
            stream.close()
            outputs.close()  # an early stop: drains what is in flight (see _map)
        lost = self.take_unanswered()
        firsts = {p.part_id: p.error for p in lost}
        self.blame(lost, exceptions)
        self.bill_lost(lost, exception_times, self.clock())
        for part in lost:
            self.pending[part.batch_id].outstanding.discard(part.part_id)
            if final:
                self.dead_letter(part, firsts[part.part_id], part.error)
                yield from self.complete(part.batch_id)
        return failed if final else failed + lost

    def dead_letter(self, part: _Part, first: str, second: str) -> None:
        owner = self.pending[part.batch_id]
        reason = dead_letter_reason(first, second, where="Modal: ")
        for row in part.rows:
            owner.failed[owner.batch.chunk_ids[row]] = reason

    def _map(self, inputs: InputStream, what: str) -> Generator[Any, None, None]:
        """``map_fn`` over ``inputs``, unordered, exceptions in the stream; Modal's own
        failures (auth, app not deployed, connection lost) become our errors.

        Closed early (the run stops on a refused result, the runner stops consuming), it
        stops feeding and drains what is in flight, so Modal's map ends as it would at the
        end of its input: closing Modal's generator while it runs printed "aclose():
        asynchronous generator is already running" tracebacks. At most the in-flight window
        (``max_containers * inflight_per_container``) is waited for."""
        outputs = iter(self.map_fn(inputs, order_outputs=False, return_exceptions=True))
        try:
            for out in outputs:  # noqa: UP028 - `yield from` would close Modal's generator first
                yield out
        except GeneratorExit:
            inputs.close()
            try:
                for _ in outputs:
                    pass
            except Exception as exc:  # the run is stopping anyway: say why the drain ended
                log.debug("Modal: draining the map after an early stop: %s", exc)
            raise
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
