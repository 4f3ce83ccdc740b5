"""The Modal executor: batches fan out to up to ten GPU containers with ``.map()``.

The containers run the very same :class:`~pipeline.embedder.InstructorEmbedder` as the
local executor (see ``jobs/modal_app.py``); this module is the client side plus the
wire format both sides share:

- one ``.map()`` input per batch (chunk ids and texts, a few hundred KB, well under
  Modal's 2 MiB argument limit), results in any order (``order_outputs=False``) and
  failures in the stream (``return_exceptions=True``);
- results are matched to batches by id. An exception in the stream carries no id, so
  a batch is known to have failed when the stream ends without its result;
- a failed batch is split in halves and retried once; chunks of a half that fails
  again are dead-lettered with the reason. A deployment that fails every batch (no
  weights in the Volume, a crash at start-up) stops the run instead of dead-lettering
  the corpus;
- Modal's input pump drains an iterator as fast as it can and runs it on its own event
  loop, so batches are pulled from the runner by a feeder thread and handed over through
  an async iterator, with at most ``max_containers * inflight_per_container`` batches
  in flight: memory stays flat and the containers never wait on the reader;
- every result carries the container's timings (model load once per container, compute
  per batch), so run reports hold real device-seconds.

``modal`` is imported lazily: loading a config must not pay for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config, ModelConfig
from pipeline.errors import ConfigError, PodembedError, TargetError
from pipeline.executors.base import Executor
from pipeline.fingerprint import model_fingerprint
from pipeline.records import Batch, BatchResult

log = logging.getLogger(__name__)

#: Never more GPU containers than this, whatever the config says.
MAX_CONTAINERS_LIMIT = 10
#: Modal's limit on one call's arguments before they go through blob storage.
PAYLOAD_LIMIT_BYTES = 2 * 1024 * 1024
#: The class and functions ``jobs/modal_app.py`` deploys (looked up by name).
EMBEDDER_CLASS = "Embedder"
INGEST_FUNCTION = "ingest_episode"

LOGIN_HELP = (
    "Modal: no credentials found. Log in once with `modal token new` (opens a browser and "
    "writes ~/.modal.toml), or export MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (from "
    "https://modal.com/settings/tokens). To run without Modal, use --executor local."
)

_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?#LW]+$")


# ---------------------------------------------------------------------------- options
@dataclass(slots=True)
class ModalOptions:
    """``[executor]`` options for ``kind = "modal"`` (also read by ``jobs/modal_app.py``)."""

    app_name: str = "podembed"
    environment: str = ""  # Modal environment; "" = the profile's default
    deployed: bool = True  # False: start an ephemeral copy of jobs/modal_app.py per run
    gpu: str = "A10G"  # Modal's GPU string; one constant, used by the app and reports
    max_containers: int = 10  # GPU containers at once; never above 10
    inflight_per_container: int = 4  # batches queued per container (memory vs. GPU idling)
    scaledown_window_s: int = 15  # idle seconds before a container stops (billed)
    batch_timeout_s: int = 300  # one batch, per attempt
    startup_timeout_s: int = 900  # container start incl. loading weights from the Volume
    retries: int = 2  # Modal retries of a crashed or timed-out batch, before our split
    abort_after_failures: int = 10  # stop the run when this many batches fail before any works
    schedule: str = "0 3 * * *"  # nightly backfill, cron in UTC; "" = no schedule
    backfill_timeout_s: int = 6 * 3600
    ingest_timeout_s: int = 1800
    weights_volume: str = "podembed-hf-cache"  # HF_HOME lives here
    reports_volume: str = "podembed-reports"  # run reports of scheduled and triggered runs
    mongo_secret: str = "podembed-mongo"  # holds the URI under the config's uri_env name
    trigger_secret: str = "podembed-trigger"  # holds PODEMBED_TRIGGER_TOKEN
    token_env: str = "PODEMBED_TRIGGER_TOKEN"

    def validate(self, prefix: str) -> None:
        """Reject settings Modal would refuse, or that break the cost or memory bounds."""
        if not 1 <= self.max_containers <= MAX_CONTAINERS_LIMIT:
            raise ConfigError(
                f"{prefix}.max_containers: must be between 1 and {MAX_CONTAINERS_LIMIT} "
                f"(got {self.max_containers})"
            )
        if not self.gpu.strip():
            raise ConfigError(f'{prefix}.gpu: must name a GPU (e.g. "A10G")')
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", self.app_name):
            raise ConfigError(
                f"{prefix}.app_name: {self.app_name!r} is not a Modal app name "
                "(lowercase letters, digits, '-', '_', '.')"
            )
        if not 1 <= self.inflight_per_container <= 64:
            raise ConfigError(f"{prefix}.inflight_per_container: must be between 1 and 64")
        if not 2 <= self.scaledown_window_s <= 3600:
            raise ConfigError(f"{prefix}.scaledown_window_s: must be between 2 and 3600")
        for name in ("batch_timeout_s", "startup_timeout_s", "backfill_timeout_s", "ingest_timeout_s"):
            if not 10 <= getattr(self, name) <= 86400:
                raise ConfigError(f"{prefix}.{name}: must be between 10 and 86400 seconds")
        if not 0 <= self.retries <= 10:
            raise ConfigError(f"{prefix}.retries: must be between 0 and 10 (Modal's limit)")
        if self.abort_after_failures < 0:
            raise ConfigError(f"{prefix}.abort_after_failures: must be 0 (never) or more")
        if self.schedule:
            fields_ = self.schedule.split()
            if len(fields_) != 5 or not all(_CRON_FIELD.match(f) for f in fields_):
                raise ConfigError(
                    f"{prefix}.schedule: {self.schedule!r} is not a 5-field cron expression "
                    '(minute hour day month weekday, UTC), e.g. "0 3 * * *"; "" disables it'
                )
        for name in ("weights_volume", "reports_volume", "mongo_secret", "trigger_secret", "token_env"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{prefix}.{name}: must not be empty")

    @property
    def max_in_flight(self) -> int:
        """Batches handed to Modal and not yet answered."""
        return self.max_containers * self.inflight_per_container


def is_t5_model(model: ModelConfig) -> bool:
    """INSTRUCTOR, GTR and sentence-T5 models are T5 encoders."""
    name = f"{model.id} {model.path}".lower()
    if any(tag in name for tag in ("instructor", "t5", "gtr-")):
        return True
    if model.path:
        cfg = Path(model.path) / "config.json"
        try:
            return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "t5"
        except (OSError, ValueError):
            return False
    return False


def check_model_for_gpu(model: ModelConfig) -> None:
    """T5 encoders overflow in float16 (NaN or silently wrong vectors): refuse, say why."""
    if model.precision == "fp16" and is_t5_model(model):
        raise ConfigError(
            f"model.precision: fp16 is not allowed for {model.id!r}: T5 encoders overflow in "
            'float16 (NaN or silently wrong vectors). Use precision = "bf16" on the GPU '
            '(the A10G supports it) or "fp32".'
        )


# ------------------------------------------------------------------------ credentials
def modal_config_path() -> Path:
    """Where the Modal client keeps its tokens (``MODAL_CONFIG_PATH`` or ``~/.modal.toml``)."""
    return Path(os.environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml")


def find_modal_credentials() -> str | None:
    """Where a Modal token is configured (``"env"`` or the file), or ``None``.

    Only looks; never talks to Modal.
    """
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return "env"
    path = modal_config_path()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    profiles = {k: v for k, v in doc.items() if isinstance(v, dict)}
    wanted = os.environ.get("MODAL_PROFILE")
    if wanted:
        candidates = [profiles.get(wanted) or {}]
    else:
        active = [p for p in profiles.values() if p.get("active")]
        candidates = active or list(profiles.values())
    if any(p.get("token_id") and p.get("token_secret") for p in candidates):
        return str(path)
    return None


def _inside_modal() -> bool:
    # A Modal container authenticates through its runtime, not through a token.
    if "MODAL_TASK_ID" not in os.environ and "MODAL_IS_REMOTE" not in os.environ:
        return False
    import modal

    return not modal.is_local()


def require_modal_credentials() -> None:
    """Fail at once, with how to log in, when no Modal token is configured."""
    if _inside_modal():
        return
    if find_modal_credentials() is not None:
        return
    half = [v for v in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET") if os.environ.get(v)]
    if half:
        missing = ({"MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"} - set(half)).pop()
        raise ConfigError(f"Modal: {half[0]} is set but {missing} is not. {LOGIN_HELP}")
    raise ConfigError(LOGIN_HELP)


def _modal_error(exc: BaseException, options: ModalOptions, what: str) -> PodembedError | None:
    """A user-actionable error for Modal's auth and lookup failures, else ``None``."""
    try:
        from modal import exception as mexc
    except ImportError:  # pragma: no cover - modal is a dependency
        return None
    if isinstance(exc, mexc.AuthError):
        return ConfigError(f"{LOGIN_HELP} ({exc})")
    if isinstance(exc, mexc.NotFoundError):
        env = f" in environment {options.environment!r}" if options.environment else ""
        return TargetError(
            f"Modal: {what} of app {options.app_name!r} not found{env}: deploy it first with "
            "`modal deploy jobs/modal_app.py` ({exc})"
        )
    return None


# ------------------------------------------------------------------------ wire format
def batch_payload(batch_id: str, chunk_ids: list[str], texts: list[str]) -> dict[str, Any]:
    """One ``.map()`` input: plain lists, so any Modal client version can send it."""
    return {"batch_id": batch_id, "chunk_ids": list(chunk_ids), "texts": list(texts)}


def payload_bytes(payload: dict[str, Any]) -> int:
    """Rough serialized size of a payload (UTF-8 text plus ids)."""
    return sum(len(t.encode("utf-8", "surrogatepass")) + 8 for t in payload["texts"]) + sum(
        len(c) + 8 for c in payload["chunk_ids"]
    )


def embed_payload(embedder: Any, payload: dict[str, Any], load_s: float = 0.0) -> dict[str, Any]:
    """The container side of one batch: run the shared embedder, return the wire result.

    Never raises for a bad batch (an out-of-memory error, a tokenizer crash): the error
    comes back with the batch id, so the client knows which batch to split.
    """
    batch_id = str(payload.get("batch_id", ""))
    chunk_ids = list(payload.get("chunk_ids", []))
    texts = list(payload.get("texts", []))
    result: dict[str, Any] = {
        "batch_id": batch_id,
        "chunk_ids": chunk_ids,
        "fingerprint": embedder.fingerprint,
        "device": str(getattr(embedder, "device", "")),
        "container": os.environ.get("MODAL_TASK_ID", f"pid-{os.getpid()}"),
        "load_s": float(load_s),
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
        result["compute_s"] = time.perf_counter() - start
        result["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        _free_device_memory()
        return result
    vectors = np.ascontiguousarray(out.vectors, dtype="<f4")
    result.update(
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


# ------------------------------------------------------------------ input streaming
_END = object()

MapFn = Callable[..., Iterable[Any]]


class _InputStream:
    """Batches from the runner, turned into payloads, handed to Modal's input pump.

    A feeder thread pulls from the runner (which may block on its reader) and stops
    pulling while ``window`` batches are unanswered. Modal iterates the stream with
    ``async for`` on its own event loop, which this never blocks; plain ``for`` (used by
    stand-ins in tests) works too.
    """

    def __init__(
        self, batches: Iterable[Batch], register: Callable[[Batch], dict[str, Any]], window: int
    ) -> None:
        self._batches = batches
        self._register = register
        self._permits = threading.Semaphore(window)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def release(self) -> None:
        """A batch was answered (result, error or exception): room for one more."""
        self._permits.release()

    def close(self) -> None:
        """Stop pulling from the runner."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._feed, name="podembed-modal-feed", daemon=True)
                self._thread.start()

    def _feed(self) -> None:
        try:
            source = iter(self._batches)
            while not self._closed.is_set():
                while not self._permits.acquire(timeout=0.2):
                    if self._closed.is_set():
                        return
                try:
                    batch = next(source)
                except StopIteration:
                    return
                self._queue.put(self._register(batch))
        except BaseException as exc:  # surfaced by the consumer after the stream ends
            self.error = exc
        finally:
            self._queue.put(_END)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._start()
        while True:
            item = self._queue.get()
            if item is _END:
                return
            yield item

    async def _aiter(self) -> AsyncIterator[dict[str, Any]]:
        self._start()
        while True:
            try:
                item = await asyncio.to_thread(self._queue.get, True, 0.5)
            except queue.Empty:
                continue
            if item is _END:
                return
            yield item

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._aiter()


# ----------------------------------------------------------------------- the executor
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

    def result(self) -> BatchResult:
        return BatchResult(
            batch_id=self.batch.batch_id,
            chunk_ids=self.batch.chunk_ids,
            vectors=self.vectors,
            failed=self.failed,
            compute_s=self.compute_s,
            load_s=self.load_s,
            fp32_retries=self.fp32_retries,
        )


@dataclass(slots=True)
class _Part:
    """One ``.map()`` input: a whole batch (first pass) or a half of a failed one (retry)."""

    part_id: str
    batch_id: str
    rows: list[int]
    payload: dict[str, Any]
    error: str = ""  # why it failed, once it has


class _Fanout:
    """The state of one ``embed()`` call: what was sent, what came back, what failed."""

    def __init__(self, executor: ModalExecutor, map_fn: MapFn) -> None:
        self.ex = executor
        self.map_fn = map_fn
        self.options = executor.options
        self.expected = executor.fingerprint()
        self.dim = executor.model_cfg.dimension
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
            self.ex.containers.add(str(out["container"]))
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
        stream = _InputStream(batches, self.register, self.options.max_in_flight)
        failed: list[_Part] = []
        exceptions: list[str] = []
        try:
            for out in self.ex._map(self.map_fn, stream, "map"):
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
        for out in self.ex._map(self.map_fn, [h.payload for h in halves], "retry map"):
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


class ModalExecutor(Executor):
    """Embeds batches on Modal: the deployed ``Embedder`` class, or an ephemeral app run.

    ``map_fn`` stands in for ``Embedder().embed.map`` (tests, and the app's scheduled
    functions, which hold the class already).
    """

    Options = ModalOptions

    def __init__(self, options: ModalOptions, model: ModelConfig, *, map_fn: MapFn | None = None) -> None:
        self.options = options
        self.model_cfg = model
        self.device_label = options.gpu
        self._map_fn = map_fn
        self._fingerprint: str | None = None
        self._exit = ExitStack()
        self.containers: set[str] = set()  # Modal task ids that answered (for logs and tests)

    @classmethod
    def open(cls, options: ModalOptions, model: ModelConfig) -> ModalExecutor:
        """Check what can be checked offline (precision, a Modal token) and fail at once."""
        check_model_for_gpu(model)
        require_modal_credentials()
        return cls(options, model)

    def fingerprint(self) -> str:
        """From the config; every result's fingerprint is checked against it."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model_cfg)
        return self._fingerprint

    def tokenizer(self) -> Any:
        """None: the runner loads the model's tokenizer alone (no weights) to count tokens."""
        return None

    def close(self) -> None:
        """Stop the ephemeral app, if this executor started one."""
        self._exit.close()

    def embed(self, batches: Iterable[Batch]) -> Iterator[BatchResult]:
        """Fan batches out; yield one result per batch as soon as it is complete."""
        return _Fanout(self, self._remote_map()).run(batches)

    def _remote_map(self) -> MapFn:
        if self._map_fn is not None:
            return self._map_fn
        require_modal_credentials()
        import modal

        env = self.options.environment or None
        if self.options.deployed:
            cls = modal.Cls.from_name(self.options.app_name, EMBEDDER_CLASS, environment_name=env)
            self._map_fn = cls().embed.map
        else:
            # An ephemeral copy of the app for this run; its containers read the config
            # named by PODEMBED_CONFIG (default configs/production.toml), as a deployment does.
            from jobs import modal_app

            self._exit.enter_context(modal.enable_output())
            self._exit.enter_context(modal_app.app.run(environment_name=env))
            self._map_fn = modal_app.Embedder().embed.map
        return self._map_fn

    def _map(self, map_fn: MapFn, inputs: Any, what: str) -> Iterator[Any]:
        """``map_fn`` over ``inputs``, unordered, exceptions in the stream; Modal's own
        failures (auth, app not deployed, connection lost) become our errors."""
        try:
            yield from map_fn(inputs, order_outputs=False, return_exceptions=True)
        except PodembedError:
            raise
        except Exception as exc:
            mapped = _modal_error(exc, self.options, f"class {EMBEDDER_CLASS}")
            if mapped is not None:
                raise mapped from None
            raise TargetError(
                f"Modal: the {what} stopped: {type(exc).__name__}: {exc}. What was embedded "
                "is kept; rerun the same command to resume."
            ) from exc


# --------------------------------------------------------------- per-episode trigger
def trigger_ingest(
    config: Config, episode_id: str, *, lookup: Callable[[str, str, str | None], Any] | None = None
) -> str:
    """Start the deployed ``ingest_episode(episode_id)``; returns the Modal call id at once.

    ``lookup(app_name, function_name, environment)`` replaces ``modal.Function.from_name``
    (tests). Follow the call with ``modal.FunctionCall.from_id(call_id).get()``.
    """
    options = config.executor.options if config.executor.kind == "modal" else ModalOptions()
    episode_id = episode_id.strip()
    if not episode_id:
        raise ConfigError("episode id: must not be empty")
    env = options.environment or None
    try:
        if lookup is None:
            require_modal_credentials()
            import modal

            fn = modal.Function.from_name(options.app_name, INGEST_FUNCTION, environment_name=env)
        else:
            fn = lookup(options.app_name, INGEST_FUNCTION, env)
        call = fn.spawn(episode_id)
    except PodembedError:
        raise
    except Exception as exc:
        mapped = _modal_error(exc, options, f"function {INGEST_FUNCTION}")
        if mapped is not None:
            raise mapped from None
        raise TargetError(f"Modal: could not start {INGEST_FUNCTION}: {type(exc).__name__}: {exc}") from exc
    return str(call.object_id)
