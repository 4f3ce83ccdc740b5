"""podembed on Modal, top to bottom: what gets deployed, and why.

    modal deploy jobs/modal_app.py                       # deploy (configs/production.toml)
    modal run jobs/modal_app.py::download_weights        # once: weights into the Volume

1. The app reads its settings from the podembed config (``PODEMBED_CONFIG``, default
   ``configs/production.toml``): GPU type, container limit, schedule, names.
2. The image: Debian slim, pinned packages, the project's own code and configs.
3. A Volume caches the model weights (``HF_HOME`` lives on it); ``download_weights``
   fills it once, so no container downloads 5 GB at start-up.
4. Secrets: the MongoDB URI, and the bearer token of the web trigger.
5. ``Embedder``: the GPU class. It loads the model on CPU into a memory snapshot (nothing
   touches CUDA before it), moves it to the GPU on restore, or fails its start-up if CUDA
   is unusable: GPUs or nothing. It embeds one batch per call with the same
   ``InstructorEmbedder`` as the local executor (same INSTRUCTOR code path, same
   fingerprint, same non-finite guard) and names its device in every result. An
   out-of-memory error fails the batch (the client splits it); any other CUDA error
   retires the container, so Modal starts a fresh one.
6. Jobs: the nightly backfill (``modal.Cron``), ``ingest_episode(episode_id)`` and
   ``reindex`` run the ordinary podembed runner in a CPU container (sized from a measured
   run), fanning batches out to ``Embedder``. Each logs its summary at INFO (``modal app
   logs``); the run report goes to the ledger (``podembed status``) and, as JSON, to a
   reports Volume.
7. ``trigger``: a web endpoint (POST ``{"episode_id": ...}`` with ``Authorization: Bearer
   <token>``) that checks the id, caps requests per minute, and spawns ``ingest_episode``
   unless that episode is already pending or running; it answers with the call id.

Everything here is importable offline and without a Modal token (tests call the
functions with ``.local()``).
"""

# No `from __future__ import annotations`: Modal reads the class parameter's type (str)
# and FastAPI the endpoint's annotations at definition time.
import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import modal

from pipeline.config import Config, load_config
from pipeline.engine.selection import Selection
from pipeline.errors import ConfigError
from pipeline.modal.executor import ModalExecutor
from pipeline.modal.gpu import GpuFault, GpuUnavailable, gpu_matches, require_cuda
from pipeline.modal.image import read_pins
from pipeline.modal.options import EMBEDDER_CLASS, ModalOptions
from pipeline.modal.trigger import PendingEpisodes, RateLimit, check_episode_id
from pipeline.modal.wire import embed_payload

try:  # in the image; the machine that deploys does not need FastAPI
    from fastapi import HTTPException, Request
except ImportError:  # pragma: no cover - depends on the local environment
    Request = Any  # type: ignore[misc,assignment]

    class HTTPException(Exception):  # type: ignore[no-redef]
        """Stand-in with FastAPI's shape (the endpoint only runs where FastAPI is)."""

        def __init__(
            self, status_code: int, detail: Any = None, headers: dict[str, str] | None = None
        ) -> None:
            super().__init__(status_code, detail)
            self.status_code, self.detail, self.headers = status_code, detail, headers


log = logging.getLogger("podembed.modal")


class _ToStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (Modal's log capture; pytest's)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging() -> None:
    """INFO and above to stderr, which ``modal app logs`` shows (idempotent). Every
    container calls it: without it, Python drops INFO and prints warnings bare."""
    root = logging.getLogger()
    if not any(isinstance(h, _ToStderr) for h in root.handlers):
        handler = _ToStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


# ----------------------------------------------------------------------------------------
# 1. Settings, from the podembed config. The image ships the chosen file at a fixed path
#    and points PODEMBED_CONFIG at it, so containers read exactly what was deployed.
# ----------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
REMOTE_CONFIG = "/root/podembed.toml"
CONFIG_PATH = os.environ.get("PODEMBED_CONFIG") or str(REPO / "configs" / "production.toml")


def read_config(path: str | os.PathLike[str]) -> Config:
    """The whole config, validated; the deployment needs ``[executor] kind = "modal"``."""
    config = load_config(path)
    if config.executor.kind != "modal":
        raise ConfigError(
            f"{path}: [executor] kind is {config.executor.kind!r}; jobs/modal_app.py deploys "
            'configs whose [executor] kind = "modal" (set PODEMBED_CONFIG to one)'
        )
    return config


CONFIG = read_config(CONFIG_PATH)
OPTIONS: ModalOptions = CONFIG.executor.options
MODEL = CONFIG.model

app = modal.App(OPTIONS.app_name)

# ----------------------------------------------------------------------------------------
# 2. The image: pinned versions (the CUDA build of torch comes from PyPI on Linux), then the
#    project's own packages and configs, added last so code edits do not rebuild the layers.
# ----------------------------------------------------------------------------------------
HF_HOME = "/hf-cache"
REPORTS_MOUNT = "/reports"
# One source of truth for versions: the pins the tests ran with (pipeline/modal/image.py),
# on the Python version they ran on.
# Inside a container the image is built already (and the file is not shipped: only Python
# sources are).
PYTHON_VERSION, PINNED = (
    read_pins() if modal.is_local() else (f"{sys.version_info[0]}.{sys.version_info[1]}", [])
)

image = (
    modal.Image.debian_slim(python_version=PYTHON_VERSION)
    .pip_install(*PINNED)
    .env(
        {
            "HF_HOME": HF_HOME,
            "PODEMBED_CONFIG": REMOTE_CONFIG,
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
    )
    .add_local_dir(REPO / "configs", "/root/configs")
    .add_local_file(CONFIG_PATH, REMOTE_CONFIG)
    .add_local_python_source("pipeline", "jobs")
)

# ----------------------------------------------------------------------------------------
# 3. The weights Volume. Containers mount it read-only and never go to the hub
#    (HF_HUB_OFFLINE): a missing download fails loudly instead of pulling 5 GB per start.
# ----------------------------------------------------------------------------------------
weights = modal.Volume.from_name(OPTIONS.weights_volume, create_if_missing=True)
reports = modal.Volume.from_name(OPTIONS.reports_volume, create_if_missing=True)
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@app.function(image=image, volumes={HF_HOME: weights}, timeout=3600)
def download_weights() -> str:
    """Fill the weights Volume once: ``modal run jobs/modal_app.py::download_weights``.

    Exactly ``model.revision`` (part of the fingerprint), and only the files the model
    needs (``pipeline.model.hub.ALLOW_PATTERNS``)."""
    if MODEL.package or MODEL.path:
        return f"{MODEL.id}: loaded from model.package/model.path, nothing to download"
    from pipeline.model.hub import download_model

    path = download_model(MODEL)
    weights.commit()
    at = f" at revision {MODEL.revision}" if MODEL.revision else " (unpinned: set model.revision)"
    return f"{MODEL.id}{at} cached in Volume {OPTIONS.weights_volume!r} at {path}"


# ----------------------------------------------------------------------------------------
# 4. Secrets. The MongoDB URI is attached only where the config reads MongoDB, under the
#    variable name the config gives (uri_env); the trigger token only to the endpoint.
# ----------------------------------------------------------------------------------------
def _mongo_env_names(config: Config) -> list[str]:
    names = {getattr(s.options, "uri_env", "") for s in (config.source, config.sink, config.checkpoint)}
    return sorted(n for n in names if n)


MONGO_ENV = _mongo_env_names(CONFIG)
job_secrets = [modal.Secret.from_name(OPTIONS.mongo_secret, required_keys=MONGO_ENV)] if MONGO_ENV else []
trigger_secret = modal.Secret.from_name(OPTIONS.trigger_secret, required_keys=[OPTIONS.token_env])

# ----------------------------------------------------------------------------------------
# 5. The GPU embedder. One model load per container: on CPU inside the memory snapshot,
#    then onto the GPU when the container is restored. One batch per call.
#    GPUs or nothing: the snapshot phase never calls into CUDA (torch would cache "no GPU"
#    for the life of the process), and the restore phase asks for "cuda" explicitly and
#    fails the container's start-up if CUDA is unusable, instead of embedding on the CPU.
# ----------------------------------------------------------------------------------------
EMBEDDER_SETTINGS: dict[str, Any] = {
    "gpu": OPTIONS.gpu,
    "max_containers": min(OPTIONS.max_containers, 10),
    "scaledown_window": OPTIONS.scaledown_window_s,
    "timeout": OPTIONS.batch_timeout_s,
    "startup_timeout": OPTIONS.startup_timeout_s,
    "retries": modal.Retries(max_retries=OPTIONS.retries, backoff_coefficient=2.0, initial_delay=1.0),
    "enable_memory_snapshot": True,
    "cpu": OPTIONS.gpu_cpu,  # reserved and billed, like the memory (see [cost])
    "memory": OPTIONS.gpu_memory_mib,  # fp32 weights are read, then kept in the configured precision
    "region": OPTIONS.region or None,
}


def process_age_s() -> float | None:
    """Seconds since this process started, as the kernel counts them (Linux), or None."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def retire_container(reason: str) -> None:
    """This container's GPU is broken: take no more inputs, so Modal starts a fresh one."""
    log.error("GPU fault, retiring this container: %s", reason)
    if modal.is_local():  # `.local()` (tests): there is no container to leave
        return
    try:
        from modal.experimental import stop_fetching_inputs

        stop_fetching_inputs()  # finishes this input (it fails), then the container exits
    except Exception:  # no graceful way out: leave hard, Modal replaces the container
        logging.shutdown()
        os._exit(70)


# Every GPU container records itself here when it starts (or fails to): the client bills
# containers that never answered a batch too (a failed start, a late scale-up).
ROSTER = modal.Dict.from_name(f"{OPTIONS.app_name}-containers", create_if_missing=True)


def record_container(started_at: float, *, boot_s: float, load_s: float = 0.0, failed: str = "") -> None:
    """This container in the roster, by task id (best effort: the bill is an estimate)."""
    task_id = os.environ.get("MODAL_TASK_ID", "")
    if not task_id:
        return  # not in a Modal container (`.local()`)
    entry = {"at": started_at, "boot_s": boot_s, "load_s": load_s, "failed": failed[:500]}
    try:
        ROSTER.put(task_id, entry)
    except Exception as exc:
        log.warning("could not record this container in the roster: %s", exc)


@app.cls(image=image, volumes={HF_HOME: weights.read_only()}, env=OFFLINE, **EMBEDDER_SETTINGS)
class Embedder:
    """``Embedder().embed.map(payloads)``: float32 vectors as bytes, timings, fingerprint,
    and the name of the GPU that computed them."""

    # Which config's [model] to embed with; "" = the deployed one. Tests pass a MiniLM config.
    config_path: str = modal.parameter(default="")

    @modal.enter(snap=True)
    def load(self) -> None:
        """Load on CPU; this state is what the memory snapshot holds. No CUDA call here."""
        from pipeline.model.embedder import InstructorEmbedder
        from pipeline.model.precision import for_gpu_name

        configure_logging()
        start = time.perf_counter()
        self.model_cfg = read_config(self.config_path or CONFIG_PATH).model
        # The snapshot holds the weights as the GPU will use them ("auto" on an A10G: bf16, half
        # the size of fp32); to_device() checks that decision on the real GPU.
        target = for_gpu_name(self.model_cfg.precision, OPTIONS.gpu)
        quiet = logging.getLogger("pipeline.model.embedder")
        level, quiet.level = quiet.level, logging.ERROR  # bf16 on CPU is fine for a snapshot
        try:
            self.embedder = InstructorEmbedder(
                self.model_cfg, device="cpu", resolved=target if target.dtype else None
            )
        finally:
            quiet.level = level
        self.load_s = time.perf_counter() - start
        self.loaded_in = os.environ.get("MODAL_TASK_ID", "")
        self.snapshot_at = time.time()
        self.retired = ""

    @modal.enter(snap=False)
    def to_device(self) -> None:
        """After a restore (or a cold start): check CUDA and the GPU type, onto the GPU, warm
        its kernels up. Records the container in the roster either way (the bill counts it)."""
        start = time.perf_counter()
        started_at = time.time()
        try:
            device, self.device_name = require_cuda()  # raises: the container fails to start
            if not gpu_matches(OPTIONS.gpu, self.device_name):
                raise GpuUnavailable(
                    f"this container got a {self.device_name}, not a {OPTIONS.gpu} (executor.gpu): "
                    "refusing to start, so that Modal places the work on another container"
                )
        except GpuUnavailable as exc:
            record_container(started_at, boot_s=time.perf_counter() - start, failed=str(exc))
            raise
        self.embedder.move_to(device)  # the GPU, in the precision "auto" picks for it
        self.embedder.embed(["warm-up"])
        move_s = time.perf_counter() - start
        # A container restored from the snapshot has a new task id and did not load the
        # weights itself: it reports only its own start-up work. Reported once, with the
        # container's first batch, so run reports count each container's load once.
        restored = os.environ.get("MODAL_TASK_ID", "") != self.loaded_in
        self.unreported_load_s = move_s + (0.0 if restored else self.load_s)
        # Start-up beyond the load (imports, runtime, restore), from the process's start as
        # the kernel counts it. A restored process may report the snapshotted one's start:
        # then only the restore hook's own time is known.
        age = process_age_s()
        if age is None or (restored and age > time.time() - self.snapshot_at):
            age = move_s
        self.unreported_boot_s = max(0.0, age - self.unreported_load_s)
        self.ready_at = time.monotonic()
        record_container(started_at, boot_s=self.unreported_boot_s, load_s=self.unreported_load_s)
        log.info("Embedder ready on %s in %.1fs (load %.1fs)", self.device_name, age, self.unreported_load_s)

    @modal.method()
    def embed(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One batch: ``{"batch_id", "chunk_ids", "texts"}`` in; vectors (float32 bytes),
        ``failed`` rows, ``compute_s``/``load_s``/``boot_s``, fingerprint, device name out.
        A bad batch (out of memory included) comes back with ``error`` set; a CUDA fault
        raises, and the container retires."""
        if self.retired:
            raise GpuFault(f"container retired after a GPU fault ({self.retired})")
        load_s, self.unreported_load_s = self.unreported_load_s, 0.0
        boot_s, self.unreported_boot_s = self.unreported_boot_s, 0.0
        try:
            out = embed_payload(self.embedder, payload, load_s, boot_s=boot_s, device_name=self.device_name)
            out["alive_s"] = time.monotonic() - self.ready_at  # the client bills the span
            return out
        except GpuFault as exc:
            self.retired = str(exc)
            retire_container(self.retired)
            raise


@app.function(
    image=image,
    volumes={HF_HOME: weights},  # writable: the compile cache is kept here for later containers
    env=OFFLINE,
    gpu=OPTIONS.gpu,
    cpu=OPTIONS.gpu_cpu,
    memory=OPTIONS.gpu_memory_mib,
    timeout=1800,
)
def gpu_check() -> str:
    """The operator's pre-flight: ``modal run jobs/modal_app.py::gpu_check``.

    One GPU container embeds one batch of the configured token budget and prints the GPU,
    versions, precision, attention kernel, tokens/s, MFU against the A10G's ~70 TFLOP/s, and
    the ``[cost] tokens_per_second`` to configure (the measuring is ``pipeline.model.gpu_check``)."""
    from pipeline.model.gpu_check import format_report, run_check

    configure_logging()
    check = run_check(MODEL, CONFIG.batching.token_budget, CONFIG.batching.max_batch_size)
    if MODEL.compile:
        from pipeline.model import compile_cache

        folder = compile_cache.directory(MODEL.compile_cache)
        if folder is not None and compile_cache.save(folder / compile_cache.artefact_name(MODEL.attention)):
            weights.commit()  # later containers of this deployment load it instead of compiling
    text = format_report(check)
    print(text)
    return text


# ----------------------------------------------------------------------------------------
# 6. Jobs: the ordinary runner in a CPU container, with the Modal executor fanning out to
#    Embedder. The ledger (MongoDB in production) records each run with its report, where
#    `podembed status` finds it; the JSON report also goes to the reports Volume.
# ----------------------------------------------------------------------------------------
def report_dir(configured: str) -> str:
    """``[report] dir`` inside the reports Volume (same relative layout as on a laptop)."""
    return str(Path(REPORTS_MOUNT) / configured.lstrip("/"))


def gpu_map() -> Any:
    """``Embedder().embed.map`` of this app (tests stand in for it)."""
    return Embedder().embed.map


def run_job(
    command: str, selection: Selection | None = None, *, force: bool = False, map_fn: Any = None
) -> dict[str, Any]:
    """Run ``podembed <command>`` here with the Modal executor; returns the run report.

    Logs the summary and where the report is at INFO. ``map_fn`` stands in for
    ``Embedder().embed.map`` (tests run this offline)."""
    from pipeline.engine.options import RunOptions
    from pipeline.engine.runner import run
    from pipeline.reporting.progress import LogProgress

    configure_logging()
    config = read_config(CONFIG_PATH)
    on_volume = dataclasses.replace(config.report, dir=report_dir(config.report.dir))  # other keys kept
    config = dataclasses.replace(config, report=on_volume)
    executor = ModalExecutor(
        config.executor.options,
        config.model,
        map_fn=map_fn or gpu_map(),
        job_container=True,
        roster=None if map_fn else ROSTER,
    )
    selection = selection or Selection()
    log.info("podembed %s (%s) starting", command, selection.describe())
    try:
        with sigterm_interrupts():
            report = run(
                config,
                RunOptions(command=command, selection=selection, force=force),
                executor=executor,
                progress=LogProgress.from_config(config, command),  # INFO lines in `modal app logs`
            )
    finally:
        executor.close()
        if not modal.is_local():
            reports.commit()  # make the JSON report visible outside this container
    log.info("%s", report.summary())
    relative = Path(config.report.dir, f"{report.run_id}.json").relative_to(REPORTS_MOUNT)
    log.info(
        "report: %s/%s (`modal volume get %s %s`); the ledger has it too (`podembed status`)",
        REPORTS_MOUNT,
        relative,
        OPTIONS.reports_volume,
        relative,
    )
    if report.status != "completed":
        # Returning would make an interrupted or failed run look finished to Modal (and to
        # whoever waits on the call). Raised: Modal retries per the function's retry policy,
        # and the next run resumes from the ledger anyway.
        raise JobNotFinished(
            f"podembed {command} {report.status} (run {report.run_id})"
            + (f": {report.error}" if report.error else "")
            + "; what was written is kept, the next run resumes"
        )
    return report.to_dict()


class JobNotFinished(RuntimeError):
    """A job's run ended interrupted or failed (its report is in the ledger and the Volume)."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a container being stopped or preempted) stops the run like Ctrl-C: the runner
    hands what is embedded to the writer, releases the run's claims and records the run as
    interrupted, instead of the process dying with its claims live until their lease ends."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals are not ours to handle here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ephemeral_map(options: ModalOptions) -> Iterator[Any]:
    """``Embedder().embed.map`` of a temporary copy of this app (``executor.deployed = false``).

    The CLI enters it for the length of one run; the copy stops when the run ends."""
    with modal.enable_output(), app.run(environment_name=options.environment or None):
        yield Embedder().embed.map


JOB_SETTINGS: dict[str, Any] = {
    "image": image,
    "secrets": job_secrets,
    "volumes": {HF_HOME: weights.read_only(), REPORTS_MOUNT: reports},
    "env": OFFLINE,  # the tokenizer (for token counts) comes from the weights Volume
    # Sized from a measured run of the client (README, "What a run costs"); billed.
    "cpu": OPTIONS.job_cpu,
    "memory": OPTIONS.job_memory_mib,
    "region": OPTIONS.region or None,  # near MongoDB
    # Without it Modal allows a job's whole timeout (6 h for the backfill) for its start-up:
    # a container that cannot start would hold the night's slot that long.
    "startup_timeout": OPTIONS.startup_timeout_s,
    "proxy": modal.Proxy.from_name(OPTIONS.proxy) if OPTIONS.proxy else None,  # a static IP
}
SCHEDULE = modal.Cron(OPTIONS.schedule, timezone="UTC") if OPTIONS.schedule else None


# Episodes with an ingest pending or running (shared by the trigger's containers and the jobs).
PENDING = PendingEpisodes(
    modal.Dict.from_name(f"{OPTIONS.app_name}-pending-episodes", create_if_missing=True),
    ttl_s=OPTIONS.ingest_timeout_s + 300,
)


@app.function(schedule=SCHEDULE, timeout=OPTIONS.backfill_timeout_s, **JOB_SETTINGS)
def nightly_backfill() -> dict[str, Any]:
    """The scheduled backfill: new, changed and re-modelled chunks of the whole source."""
    return run_job("backfill")


@app.function(timeout=OPTIONS.ingest_timeout_s, **JOB_SETTINGS)
def ingest_episode(episode_id: str) -> dict[str, Any]:
    """Embed one episode now (what is new or changed in it); returns the run report."""
    try:
        return run_job("ingest", Selection(episode_ids=(check_episode_id(episode_id),)))
    finally:
        with contextlib.suppress(Exception):  # an entry left behind expires after ttl_s
            PENDING.finish(episode_id, modal.current_function_call_id())


@app.function(timeout=OPTIONS.backfill_timeout_s, **JOB_SETTINGS)
def reindex(episodes: str = "", podcasts: str = "", since: str = "") -> dict[str, Any]:
    """Re-embed the selection even if current (comma-separated ids; since = YYYY-MM-DD);
    nothing selected = everything: ``modal run jobs/modal_app.py::reindex --episodes a,b``."""
    try:
        when = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise ConfigError(f"--since: {since!r} is not a date (use YYYY-MM-DD or an ISO timestamp)") from None
    selection = Selection(
        episode_ids=tuple(check_episode_id(e) for e in episodes.split(",") if e.strip()),
        podcast_ids=tuple(p.strip() for p in podcasts.split(",") if p.strip()),
        since=when.replace(tzinfo=when.tzinfo or UTC) if when else None,
    )
    return run_job("reindex", selection, force=True)


# ----------------------------------------------------------------------------------------
# 7. The web trigger: POST {"episode_id": "..."} with "Authorization: Bearer <token>".
#    The token comes from a Secret and is compared in constant time.
# ----------------------------------------------------------------------------------------
def bearer_token_ok(authorization: Any, expected: str) -> bool:
    """True only for ``Bearer <expected>``; constant-time comparison."""
    if not expected or not isinstance(authorization, str):
        return False
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8"), expected.encode("utf-8"))


def spawn_ingest(episode_id: str) -> str:
    """Start ``ingest_episode`` without waiting; the Modal call id."""
    return ingest_episode.spawn(episode_id).object_id


# One trigger container serves every request (max_containers=1, concurrent inputs), so this
# in-memory cap is global.
RATE = RateLimit(OPTIONS.trigger_per_minute)


async def handle_trigger(request: Request) -> dict[str, Any]:
    """Authenticated per-episode trigger; answers ``{"call_id", "episode_id", "deduplicated"}``:
    401 bad token, 422 bad body or episode id, 429 too many requests, 503 no token configured.

    The token is checked before the body is read: an unauthenticated caller learns nothing
    from the answer (FastAPI validating a declared body parameter first answered 422 with
    the caller's input echoed). Modal calls are made off the event loop, and no lock is
    held around them: requests for different episodes never wait on each other."""
    configure_logging()
    expected = os.environ.get(OPTIONS.token_env, "")
    if not expected:
        log.error("trigger: %s is not set in Secret %r", OPTIONS.token_env, OPTIONS.trigger_secret)
        raise HTTPException(status_code=503, detail="trigger token not configured")
    if not bearer_token_ok(request.headers.get("authorization"), expected):
        raise HTTPException(
            status_code=401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
    wait_s = RATE.wait_s()
    if wait_s:
        raise HTTPException(
            status_code=429,
            detail=f"more than {OPTIONS.trigger_per_minute} requests a minute; retry later",
            headers={"Retry-After": str(max(1, round(wait_s)))},
        )
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or "episode_id" not in body:
        raise HTTPException(status_code=422, detail='body must be JSON: {"episode_id": "<id>"}')
    try:
        episode_id = check_episode_id(body["episode_id"])
    except ConfigError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    call_id, started = await asyncio.to_thread(PENDING.start, episode_id, spawn_ingest)
    if started:
        log.info("trigger: episode %s: ingest started as %s", episode_id, call_id)
    else:
        log.info("trigger: episode %s already pending or running as %s", episode_id, call_id or "(spawning)")
    return {"call_id": call_id, "episode_id": episode_id, "deduplicated": not started}


trigger = app.function(image=image, secrets=[trigger_secret], max_containers=1, name="trigger")(
    modal.concurrent(max_inputs=32)(modal.fastapi_endpoint(method="POST", docs=False)(handle_trigger))
)


__all__ = [
    "EMBEDDER_CLASS",
    "Embedder",
    "app",
    "download_weights",
    "ingest_episode",
    "nightly_backfill",
    "reindex",
    "trigger",
]
