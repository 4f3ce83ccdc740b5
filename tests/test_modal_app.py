"""jobs/modal_app.py offline: the app definition, the GPU class run with ``.local()`` on
the bundled MiniLM, the jobs through the real runner, and the authenticated trigger."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

import jobs.modal_app as modal_app
from pipeline.config import load_config
from pipeline.engine.local import LocalExecutor, LocalOptions
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.engine.selection import Selection
from pipeline.errors import ConfigError
from pipeline.modal.executor import ModalExecutor
from pipeline.modal.options import EMBEDDER_CLASS
from pipeline.modal.wire import decode_vectors
from pipeline.model.embedder import InstructorEmbedder
from pipeline.model.fingerprint import model_fingerprint
from pipeline.records import Batch
from tests.helpers import make_config, sample_rows, vectors_by_id, write_rows
from tests.modal_fixtures import cpu_as_a10g, local_map, modal_minilm_config

pytestmark = [
    pytest.mark.filterwarnings("ignore:The Embedder.embed function is executing locally:UserWarning"),
    pytest.mark.filterwarnings("ignore:The .* function is executing locally and will not have access"),
]

TEXTS = [
    "  So the telescope arrived on a Tuesday, and honestly we were not ready for it.  ",
    "Welcome back to the show.",
    "Let's talk about sourdough starters and why mine keeps dying every winter, because "
    "I think it has something to do with the temperature in the kitchen.",
]


@pytest.fixture(scope="module", autouse=True)
def _restore_logging():
    """The app's containers configure logging at INFO; leave the session as it was."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)


@pytest.fixture(scope="module")
def minilm_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return modal_minilm_config(tmp_path_factory.mktemp("modal-cfg"))


@pytest.fixture(scope="module")
def embedder_obj(minilm_config: Path):
    """One local instance of the GPU class (its enter hooks run on the first call, with a
    stand-in for the CUDA check: there is no GPU here)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modal_app, "require_cuda", cpu_as_a10g)
        yield modal_app.Embedder(config_path=str(minilm_config))


# ------------------------------------------------------------------ the app definition
def test_the_gpu_class_is_defined_for_a10g_with_snapshots_and_limits() -> None:
    info = modal_app.Embedder().embed.info()
    assert info.gpus == [("A10G", 1)]
    assert info.timeout == modal_app.OPTIONS.batch_timeout_s and info.max_retries == 2
    assert info.volumes[modal_app.HF_HOME].read_only  # weights are only read by the GPUs
    settings = modal_app.EMBEDDER_SETTINGS
    assert settings["gpu"] == "A10G" and 1 <= settings["max_containers"] <= 10
    assert settings["max_containers"] == 10  # production.toml asks for ten
    assert settings["enable_memory_snapshot"] is True
    assert modal_app.Embedder.__name__ == EMBEDDER_CLASS  # the name clients look up


def test_the_jobs_schedule_and_endpoint_are_defined() -> None:
    assert modal_app.nightly_backfill.info().schedule == "Cron('0 3 * * *', UTC)"
    assert modal_app.ingest_episode.info().timeout == modal_app.OPTIONS.ingest_timeout_s
    assert modal_app.trigger.info().web_info.method == "POST"
    assert not modal_app.download_weights.info().volumes[modal_app.HF_HOME].read_only
    # Production reads MongoDB, so the jobs get the URI secret under the config's name.
    assert modal_app.MONGO_ENV == ["PODEMBED_MONGO_URI"]


def test_the_deployment_refuses_a_non_modal_or_fp16_t5_config(tmp_path: Path, minilm_config: Path) -> None:
    text = minilm_config.read_text()
    local = tmp_path / "local.toml"
    head, _, rest = text.partition("[executor]")
    local.write_text(head + '[executor]\nkind = "local"\n\n[cost]' + rest.partition("[cost]")[2])
    with pytest.raises(ConfigError, match=r'kind = "modal"'):
        modal_app.read_config(local)
    t5 = tmp_path / "t5.toml"
    t5.write_text(
        text.replace('id = "all-MiniLM-L6-v2"', 'id = "hkunlp/instructor-xl"').replace(
            'precision = "fp32"', 'precision = "fp16"'
        )
    )
    with pytest.raises(ConfigError, match="fp16 is not allowed"):
        modal_app.read_config(t5)


# ---------------------------------------------------------- the GPU class, run locally
def test_embedder_class_gives_the_local_vectors_and_fingerprint(embedder_obj, minilm_config: Path) -> None:
    model = load_config(minilm_config).model
    ids = [f"c{i}" for i in range(len(TEXTS))]
    out = embedder_obj.embed.local({"batch_id": "b0", "chunk_ids": ids, "texts": TEXTS})
    assert out["error"] is None and out["batch_id"] == "b0" and out["chunk_ids"] == ids
    vectors = decode_vectors(out, len(TEXTS), 384)

    reference = InstructorEmbedder(model).embed(TEXTS).vectors
    assert np.abs(vectors - reference).max() <= 1e-6
    local = LocalExecutor(LocalOptions(), model)
    batch = Batch("b0", ids, [t.strip() for t in TEXTS], [10] * 3, 30)
    (local_result,) = list(local.embed([batch]))
    assert np.abs(vectors - local_result.vectors).max() <= 1e-6
    assert out["fingerprint"] == model_fingerprint(model) == local.fingerprint()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    # The container reports its model load once (first batch), compute every time.
    assert out["load_s"] > 0 and out["compute_s"] > 0
    again = embedder_obj.embed.local({"batch_id": "b1", "chunk_ids": ids[:1], "texts": TEXTS[:1]})
    assert again["load_s"] == 0.0 and again["compute_s"] > 0


def test_embedder_class_reports_a_bad_batch_instead_of_raising(embedder_obj) -> None:
    out = embedder_obj.embed.local({"batch_id": "bad", "chunk_ids": ["a", "b"], "texts": ["x"]})
    assert out["batch_id"] == "bad" and "2 chunk ids but 1 texts" in out["error"]


# -------------------------------------------------- the jobs, through the real runner
def test_modal_executor_through_the_runner_matches_the_local_executor(tmp_path: Path, embedder_obj) -> None:
    src = write_rows(tmp_path / "chunks.parquet", sample_rows(episodes=2))
    batching = {"window_chunks": 32, "token_budget": 2048, "max_batch_size": 16}
    local_cfg = make_config(src, tmp_path / "out-local", batching=batching)
    modal_cfg = make_config(
        src,
        tmp_path / "out-modal",
        batching=batching,
        executor={"kind": "modal", "max_containers": 2, "inflight_per_container": 2},
    )
    timings: list[float] = []

    def call(payload: dict) -> dict:
        out = embedder_obj.embed.local(payload)
        timings.append(out["compute_s"] + out["load_s"])
        return out

    executor = ModalExecutor(modal_cfg.executor.options, modal_cfg.model, map_fn=local_map(call))
    modal_report = run(modal_cfg, RunOptions(), executor=executor)
    local_report = run(local_cfg, RunOptions())

    assert modal_report.status == "completed" and modal_report.counts.embedded == 46
    assert modal_report.device == "A10G" and modal_report.batches == len(timings) > 1
    # Device-seconds are what the containers reported, and cost follows from them.
    assert modal_report.device_s == pytest.approx(sum(timings), abs=2e-3)
    assert modal_report.cost_usd == pytest.approx(modal_report.device_s / 3600 * 1.10, abs=1e-6)
    # The devices that served, and the billed estimate: measured parts from the container,
    # its idle tail (one container, in this process), no job container (this is not one).
    assert modal_report.devices == {"NVIDIA A10G": len(timings)} and modal_report.containers == 1
    bill = modal_report.bill
    assert bill.compute_s + bill.load_s == pytest.approx(modal_report.device_s, abs=2e-3)
    assert bill.idle_s == 15.0 and bill.job_s == 0.0 and bill.containers == 1
    assert modal_report.billed_usd == pytest.approx(sum(bill.parts_usd.values()), abs=1e-5)
    assert modal_report.billed_usd > modal_report.cost_usd
    got, want = vectors_by_id(tmp_path / "out-modal"), vectors_by_id(tmp_path / "out-local")
    assert got.keys() == want.keys() and len(got) == 46
    assert max(float(np.abs(got[k] - want[k]).max()) for k in got) <= 1e-6
    assert local_report.model_fingerprint == modal_report.model_fingerprint


def test_ingest_job_runs_one_episode_and_writes_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder_obj, caplog: pytest.LogCaptureFixture
) -> None:
    src = write_rows(tmp_path / "chunks.parquet", sample_rows(episodes=2))
    cfg = modal_minilm_config(tmp_path / "cfg", source=src)
    monkeypatch.setattr(modal_app, "CONFIG_PATH", str(cfg))
    monkeypatch.setattr(modal_app, "REPORTS_MOUNT", str(tmp_path / "volume"))

    with caplog.at_level(logging.INFO, logger="pipeline.reporting.progress"):
        report = modal_app.run_job(
            "ingest", Selection(episode_ids=("pc-astro-ep02",)), map_fn=local_map(embedder_obj.embed.local)
        )
    assert report["status"] == "completed" and report["command"] == "ingest"
    # The progress lines an operator reads in `modal app logs`.
    progress = [r.getMessage() for r in caplog.records if r.name == "pipeline.reporting.progress"]
    done = report["counts"]["embedded"]
    assert any(m.endswith("[shard done]") for m in progress), progress
    assert progress[-1].startswith(f"ingest: {done}/{done} chunks (100%)"), progress
    assert progress[-1].endswith("[completed]"), progress
    assert report["counts"]["embedded"] == len(sample_rows(episodes=2)) - len(sample_rows(episodes=1))
    assert report["device"] == "A10G" and report["device_s"] > 0
    written = list((tmp_path / "volume").rglob(f"{report['run_id']}.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["run_id"] == report["run_id"]
    # Same relative layout as the config's [report] dir, under the Volume's mount.
    assert str(written[0].parent).endswith(str(tmp_path / "cfg" / "out" / "runs"))


# ------------------------------------------------------------------ the web trigger
class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def trigger_env(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from tests.modal_fixtures import MemoryDict

    spawned: list[str] = []
    monkeypatch.setenv(modal_app.OPTIONS.token_env, "s3cret-token")
    monkeypatch.setattr(modal_app, "spawn_ingest", lambda eid: spawned.append(eid) or "fc-42")
    pending = modal_app.PendingEpisodes(MemoryDict(), ttl_s=600, call_done=lambda call_id: False)
    monkeypatch.setattr(modal_app, "PENDING", pending)
    monkeypatch.setattr(modal_app, "RATE", modal_app.RateLimit(1000))
    return spawned


def post(body: object, authorization: str | None = None, raw: bytes | None = None):
    """The trigger as Modal serves it (its own FastAPI wrapper), called over ASGI."""
    from modal._runtime.asgi import magic_fastapi_app

    from tests.modal_fixtures import asgi_post

    app = magic_fastapi_app(modal_app.handle_trigger, "POST", False)
    headers = {"content-type": "application/json"}
    if authorization is not None:
        headers["authorization"] = authorization
    return asgi_post(app, raw if raw is not None else json.dumps(body).encode(), headers)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong",
        "Basic s3cret-token",
        "Bearer s3cret-token-and-more",
        "s3cret-token",
    ],
)
def test_trigger_refuses_a_missing_or_wrong_token(trigger_env: list[str], header: str | None) -> None:
    status, _, headers = post({"episode_id": "ep-1"}, header)
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert trigger_env == []


def test_trigger_checks_the_token_before_it_reads_the_body(trigger_env: list[str]) -> None:
    """Before: FastAPI validated the declared body first, answering an unauthenticated
    caller 422 with its own input echoed back."""
    for raw in (b"not json <script>", b'["ep-1"]', b"{}", b'{"episode_id": "../etc/passwd"}'):
        status, answer, _ = post(None, None, raw=raw)
        assert status == 401, (raw, answer)
        assert "passwd" not in json.dumps(answer) and "script" not in json.dumps(answer)
    status, answer, _ = post(None, BEARER, raw=b"not json")
    assert status == 422 and "episode_id" in answer["detail"]
    assert trigger_env == []


def test_trigger_accepts_the_right_token_and_returns_the_call_id(trigger_env: list[str]) -> None:
    status, out, _ = post({"episode_id": " ep-1 "}, "Bearer s3cret-token")
    assert status == 200 and out == {"call_id": "fc-42", "episode_id": "ep-1", "deduplicated": False}
    assert trigger_env == ["ep-1"]
    status, _, _ = post({"episode": "ep-1"}, "bearer s3cret-token")
    assert status == 422


def test_trigger_without_a_configured_token_accepts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(modal_app.OPTIONS.token_env, raising=False)
    monkeypatch.setattr(modal_app, "spawn_ingest", lambda eid: pytest.fail("must not spawn"))
    for header in (None, "Bearer ", "Bearer anything"):
        assert post({"episode_id": "ep-1"}, header)[0] == 503


def test_bearer_token_check_is_constant_time() -> None:
    import inspect

    assert "hmac.compare_digest" in inspect.getsource(modal_app.bearer_token_ok)
    assert modal_app.bearer_token_ok("Bearer abc", "abc")
    assert not modal_app.bearer_token_ok("Bearer abc", "")


# ------------------------------------------------------------ GPUs or nothing (issue 9)
def test_the_gpu_class_fails_its_start_up_without_cuda(minilm_config: Path, monkeypatch) -> None:
    """No usable CUDA (this machine has none): the container must not start, rather than
    embed on the CPU and report it as an A10G."""
    from pipeline.modal.gpu import GpuUnavailable, require_cuda

    monkeypatch.setattr(modal_app, "require_cuda", require_cuda)  # the real check
    obj = modal_app.Embedder(config_path=str(minilm_config))
    with pytest.raises(GpuUnavailable, match=r"no usable CUDA device.*refusing to embed on the CPU"):
        obj.embed.local({"batch_id": "b0", "chunk_ids": ["c0"], "texts": ["hello"]})


def test_a_container_on_another_gpu_type_refuses_to_start_and_is_still_billed(
    minilm_config: Path, monkeypatch
) -> None:
    """Before: it started and served, and the client stopped the whole night on its first
    result. Now it leaves at start-up (Modal places the work elsewhere) and records itself
    in the roster, so the bill counts its start-up."""
    from pipeline.modal.gpu import GpuUnavailable
    from tests.modal_fixtures import MemoryDict

    roster = MemoryDict()
    monkeypatch.setattr(modal_app, "ROSTER", roster)
    monkeypatch.setattr(modal_app, "require_cuda", lambda: ("cpu", "Tesla T4"))
    monkeypatch.setenv("MODAL_TASK_ID", "ta-t4")
    obj = modal_app.Embedder(config_path=str(minilm_config))
    with pytest.raises(GpuUnavailable, match=r"got a Tesla T4, not a A10G"):
        obj.embed.local({"batch_id": "b0", "chunk_ids": ["c0"], "texts": ["hello"]})
    entry = roster.get("ta-t4")
    assert entry["failed"].startswith("this container got a Tesla T4") and entry["boot_s"] >= 0
    # A container on the right type (Modal's "A10" name included) records itself as started.
    monkeypatch.setattr(modal_app, "require_cuda", lambda: ("cpu", "NVIDIA A10"))
    monkeypatch.setenv("MODAL_TASK_ID", "ta-a10")
    out = modal_app.Embedder(config_path=str(minilm_config)).embed.local(
        {"batch_id": "b1", "chunk_ids": ["c1"], "texts": ["hello"]}
    )
    assert out["error"] is None and out["alive_s"] >= out["compute_s"] > 0
    assert roster.get("ta-a10")["failed"] == "" and roster.get("ta-a10")["load_s"] > 0


def test_nothing_calls_into_cuda_before_the_snapshot(minilm_config: Path, monkeypatch) -> None:
    """torch caches "no GPU" if CUDA is queried while the snapshot is taken (no GPU there):
    every CUDA query must come after the restore hook started."""
    import torch

    from pipeline.model import model_cache

    events: list[str] = []

    def spy(name: str, real):
        def call(*args, **kwargs):
            events.append(f"cuda.{name}")
            return real(*args, **kwargs)

        return call

    for name in ("is_available", "device_count", "init", "_lazy_init", "current_device", "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, spy(name, getattr(torch.cuda, name)))

    def probe() -> tuple[str, str]:
        events.append("restore")
        torch.cuda.is_available()  # what the real check does first
        return cpu_as_a10g()

    monkeypatch.setattr(modal_app, "require_cuda", probe)
    model_cache.clear()  # a real load inside the snapshot phase, not a cached model
    out = modal_app.Embedder(config_path=str(minilm_config)).embed.local(
        {"batch_id": "b0", "chunk_ids": ["c0"], "texts": ["hello"]}
    )
    assert out["error"] is None and out["device_name"] == "NVIDIA A10G"
    assert "restore" in events, events
    assert all(not e.startswith("cuda.") for e in events[: events.index("restore")]), events


class _FaultyEmbedder(InstructorEmbedder):
    """The real embedder, with faults injected by marker texts."""

    def embed(self, texts: list[str]):
        import torch

        if any("__oom__" in t for t in texts):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any("__xid__" in t for t in texts):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().embed(texts)


@pytest.fixture()
def faulty_container(minilm_config: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh GPU-class instance whose embedder injects faults; records retirements."""
    import pipeline.model.embedder

    retired: list[str] = []
    monkeypatch.setattr(pipeline.model.embedder, "InstructorEmbedder", _FaultyEmbedder)
    monkeypatch.setattr(modal_app, "require_cuda", cpu_as_a10g)
    monkeypatch.setattr(modal_app, "retire_container", retired.append)
    return modal_app.Embedder(config_path=str(minilm_config)), retired


def test_out_of_memory_fails_the_batch_and_the_container_stays(faulty_container) -> None:
    obj, retired = faulty_container
    ids = ["c0", "c1"]
    out = obj.embed.local({"batch_id": "big", "chunk_ids": ids, "texts": ["__oom__ a", "b"]})
    assert out["batch_id"] == "big" and "out of memory" in out["error"]  # the client splits it
    assert retired == []
    again = obj.embed.local({"batch_id": "next", "chunk_ids": ids, "texts": ["a", "b"]})
    assert again["error"] is None and len(decode_vectors(again, 2, 384)) == 2


def test_a_cuda_fault_retires_the_container(faulty_container) -> None:
    from pipeline.modal.gpu import GpuFault

    obj, retired = faulty_container
    with pytest.raises(GpuFault, match="illegal memory access"):
        obj.embed.local({"batch_id": "b7", "chunk_ids": ["c0"], "texts": ["__xid__"]})
    assert len(retired) == 1 and "b7" in retired[0] and "illegal memory access" in retired[0]
    # A retired container takes no more work (Modal sends it to a fresh one).
    with pytest.raises(GpuFault, match="retired"):
        obj.embed.local({"batch_id": "b8", "chunk_ids": ["c1"], "texts": ["fine text"]})
    assert len(retired) == 1


# ------------------------------------------------------------- logs where operators look
@pytest.fixture()
def job_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder_obj):
    """The jobs, offline: a MiniLM config, the reports Volume in tmp, the GPU class local."""
    import logging

    from tests.modal_fixtures import MemoryDict

    src = write_rows(tmp_path / "chunks.parquet", sample_rows(episodes=2))
    monkeypatch.setattr(modal_app, "CONFIG_PATH", str(modal_minilm_config(tmp_path / "cfg", source=src)))
    monkeypatch.setattr(modal_app, "REPORTS_MOUNT", str(tmp_path / "volume"))
    monkeypatch.setattr(modal_app, "gpu_map", lambda: local_map(embedder_obj.embed.local))
    pending = modal_app.PendingEpisodes(MemoryDict(), ttl_s=600, call_done=lambda call_id: False)
    monkeypatch.setattr(modal_app, "PENDING", pending)
    monkeypatch.setattr(modal_app, "ROSTER", MemoryDict())
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield tmp_path, pending
    root.setLevel(level)
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)


def test_every_job_logs_its_summary_and_report_location(job_env, capsys: pytest.CaptureFixture) -> None:
    tmp_path, _ = job_env
    reports = [
        modal_app.nightly_backfill.local(),
        modal_app.ingest_episode.local("pc-astro-ep02"),
        modal_app.reindex.local(episodes="pc-astro-ep01"),
    ]
    err = capsys.readouterr().err
    for report, command in zip(reports, ("backfill", "ingest", "reindex"), strict=True):
        assert report["status"] == "completed" and report["command"] == command
        # The one-screen summary, at INFO, on stderr (what `modal app logs` shows) ...
        assert f"INFO podembed.modal: run {report['run_id']} ({command}," in err
        # ... and where the report is: the path in the Volume and how to fetch it.
        path = f"{report['run_id']}.json"
        assert f"`modal volume get {modal_app.OPTIONS.reports_volume} " in err and path in err
        assert list((tmp_path / "volume").rglob(path))
        # A job container is billed too (cores and memory for the run's wall time). The
        # amount follows the run's wall time, which a fast machine makes tiny: check the rate.
        config = modal_app.read_config(modal_app.CONFIG_PATH)
        opts, cost = config.executor.options, config.cost
        job_rate = (
            opts.job_cpu * cost.cpu_core_usd_per_s + opts.job_memory_mib / 1024 * cost.memory_gib_usd_per_s
        )
        assert job_rate > 0 and report["bill"]["job_s"] > 0
        assert report["bill"]["parts_usd"]["job"] == pytest.approx(
            report["bill"]["job_s"] * job_rate, abs=2e-6
        )
    assert "billed (estimate):" in err and "served by: NVIDIA A10G" in err
    assert reports[2]["counts"]["embedded"] > 0  # reindex re-embeds what backfill embedded


# ---------------------------------------------------- the trigger's guards (issue 9)
BEARER = "Bearer s3cret-token"


@pytest.mark.parametrize(
    "episode_id",
    ["x" * 129, "ep\x001", "ep-1\nDROP", "ep 1", "../etc", "-ep", 42, None, ["ep-1"], "  "],
)
def test_trigger_refuses_a_bad_episode_id_with_422(trigger_env: list[str], episode_id) -> None:
    status, answer, _ = post({"episode_id": episode_id}, BEARER)
    assert status == 422, answer
    assert "episode id" in str(answer["detail"])
    assert trigger_env == []


def test_trigger_accepts_real_ids(trigger_env: list[str]) -> None:
    ids = ["pc-astro-ep02", "65f1c2a9e4b0a1b2c3d4e5f6", "3f2b8c1e-7d4a-4e9b-9c1d-2a3b4c5d6e7f", "x" * 128]
    for eid in ids:
        assert post({"episode_id": eid}, BEARER)[0] == 200
    assert trigger_env == ids


def test_trigger_deduplicates_an_episode_pending_or_running(trigger_env: list[str], monkeypatch) -> None:
    from tests.modal_fixtures import MemoryDict

    clock = FakeClock()
    pending = modal_app.PendingEpisodes(MemoryDict(), ttl_s=600, clock=clock, call_done=lambda c: False)
    monkeypatch.setattr(modal_app, "PENDING", pending)
    calls = iter(f"fc-{i}" for i in range(10))
    monkeypatch.setattr(modal_app, "spawn_ingest", lambda eid: trigger_env.append(eid) or next(calls))

    def trigger(eid: str) -> dict:
        status, answer, _ = post({"episode_id": eid}, BEARER)
        assert status == 200, answer
        return answer

    first = trigger("ep-1")
    again = trigger("ep-1")
    other = trigger("ep-2")
    assert first == {"call_id": "fc-0", "episode_id": "ep-1", "deduplicated": False}
    assert again == {"call_id": "fc-0", "episode_id": "ep-1", "deduplicated": True}
    assert other["call_id"] == "fc-1" and trigger_env == ["ep-1", "ep-2"]
    # The job ends and frees its episode (only its own entry): the next trigger spawns.
    pending.finish("ep-1", "fc-other")
    assert trigger("ep-1")["deduplicated"]
    pending.finish("ep-1", "fc-0")
    assert trigger("ep-1")["call_id"] == "fc-2"
    # A job that died without freeing its episode holds it for ttl_s at most.
    clock.t += 601
    assert trigger("ep-1")["call_id"] == "fc-3"
    assert trigger_env == ["ep-1", "ep-2", "ep-1", "ep-1"]


def test_the_ingest_job_frees_its_episode_when_it_ends(job_env, monkeypatch) -> None:
    _, pending = job_env
    pending.store.put("pc-astro-ep02", {"call_id": "fc-job", "at": 1e12})
    monkeypatch.setattr(modal_app.modal, "current_function_call_id", lambda: "fc-job")
    modal_app.ingest_episode.local("pc-astro-ep02")
    assert pending.store.get("pc-astro-ep02") is None


def test_trigger_caps_requests_per_minute_with_429(trigger_env: list[str], monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(modal_app, "RATE", modal_app.RateLimit(3, clock=clock))
    for i in range(3):
        assert post({"episode_id": f"ep-{i}"}, BEARER)[0] == 200
    clock.t += 20
    status, _, headers = post({"episode_id": "ep-9"}, BEARER)
    assert status == 429 and headers["retry-after"] == "40"
    # Requests without the token do not use up the budget; a minute later there is room again.
    assert post({"episode_id": "ep-9"}, "Bearer nope")[0] == 401
    clock.t += 40
    assert post({"episode_id": "ep-9"}, BEARER)[0] == 200
    assert trigger_env == ["ep-0", "ep-1", "ep-2", "ep-9"]


def test_job_functions_reserve_measured_cpu_and_memory() -> None:
    for fn in (modal_app.nightly_backfill, modal_app.ingest_episode, modal_app.reindex):
        info = fn.info()
        assert info.cpu == modal_app.OPTIONS.job_cpu >= 0.5, fn
        assert info.memory_mib == modal_app.OPTIONS.job_memory_mib >= 1024, fn
        # Start-up has its own limit, not the job's whole timeout (6 h for the backfill).
        assert info.startup_timeout == modal_app.OPTIONS.startup_timeout_s < info.timeout, fn
    gpu = modal_app.Embedder().embed.info()
    assert (gpu.cpu, gpu.memory_mib) == (modal_app.OPTIONS.gpu_cpu, modal_app.OPTIONS.gpu_memory_mib)
    # The trigger takes concurrent requests in one container, so its rate cap is global.
    assert modal_app.trigger.info().concurrency_info.max_inputs == 32


# ------------------------------------------------- jobs that did not finish (issue 21)
def test_a_job_stopped_by_sigterm_releases_its_claims_and_raises(job_env, monkeypatch) -> None:
    """Before: the runner turned the interrupt into status "interrupted" and run_job
    returned normally, so Modal took a half-done job for a finished one."""
    import signal

    from pipeline.parts import open_parts

    tmp_path, _ = job_env
    inner = local_map(modal_app.Embedder(config_path=str(modal_app.CONFIG_PATH)).embed.local)
    held_during_run: list[list[str]] = []

    def map_then_sigterm(inputs, **kw):
        for i, out in enumerate(inner(inputs, **kw)):
            yield out
            if i == 1:
                parts = open_parts(modal_app.read_config(modal_app.CONFIG_PATH))
                try:
                    held_during_run.extend(r.claims for r in parts.checkpoint.live_runs())
                finally:
                    parts.close()
                signal.raise_signal(signal.SIGTERM)  # what a preempted container gets

    unhandled: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: unhandled.append(signum))
    monkeypatch.setattr(modal_app, "require_cuda", cpu_as_a10g)
    try:
        with pytest.raises(modal_app.JobNotFinished, match=r"backfill interrupted"):
            modal_app.run_job("backfill", map_fn=map_then_sigterm)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert unhandled == []  # the job handled it
    assert held_during_run and held_during_run[0]  # it held claims while it ran ...
    parts = open_parts(modal_app.read_config(modal_app.CONFIG_PATH))
    try:
        assert parts.checkpoint.live_runs() == []  # ... and none after it stopped
    finally:
        parts.close()
    (saved,) = (tmp_path / "volume").rglob("*.json")
    assert json.loads(saved.read_text())["status"] == "interrupted"


def test_a_failed_job_raises_instead_of_returning_its_report(job_env) -> None:
    def broken_map(inputs, **kw):
        raise ConnectionError("lost the connection to Modal")
        yield  # pragma: no cover

    with pytest.raises(modal_app.JobNotFinished, match=r"ingest failed .*lost the connection"):
        modal_app.run_job("ingest", Selection(episode_ids=("pc-astro-ep02",)), map_fn=broken_map)


# ------------------------------------------------ the trigger across containers (issue 21)
def test_two_trigger_containers_spawn_one_ingest_for_one_episode() -> None:
    """Before: get -> spawn -> put under a per-process lock; two containers (a redeploy)
    both saw no entry and both spawned."""
    import threading

    from tests.modal_fixtures import MemoryDict

    store = MemoryDict()
    old, new = (modal_app.PendingEpisodes(store, ttl_s=600, call_done=lambda c: False) for _ in range(2))
    spawned: list[str] = []
    in_spawn, other_done = threading.Event(), threading.Event()

    def slow_spawn(eid: str) -> str:
        spawned.append(eid)
        in_spawn.set()
        other_done.wait(timeout=30)  # the other container answers while this spawn is under way
        return "fc-old"

    first: list[tuple[str, bool]] = []
    t = threading.Thread(target=lambda: first.append(old.start("ep-1", slow_spawn)))
    t.start()
    assert in_spawn.wait(timeout=30)
    second = new.start("ep-1", lambda eid: spawned.append(eid) or "fc-new")
    other_done.set()
    t.join(timeout=30)
    assert spawned == ["ep-1"]
    assert second == ("", False)  # on its way; its call id is being recorded
    assert first == [("fc-old", True)]
    assert new.start("ep-1", lambda eid: pytest.fail("must not spawn")) == ("fc-old", False)


def test_trigger_requests_for_different_episodes_do_not_wait_on_each_other() -> None:
    """Before: one lock around get/spawn/put serialised every request (20 requests with a
    0.3 s spawn took 6 s). Here every spawn waits until all 20 are inside spawn at once:
    with a lock around it, the barrier breaks."""
    import threading

    from tests.modal_fixtures import MemoryDict

    pending = modal_app.PendingEpisodes(MemoryDict(), ttl_s=600, call_done=lambda c: False)
    barrier = threading.Barrier(20, timeout=30)
    results: dict[str, tuple[str, bool]] = {}
    errors: list[BaseException] = []

    def spawn(eid: str) -> str:
        barrier.wait()
        return f"fc-{eid}"

    def request(eid: str) -> None:
        try:
            results[eid] = pending.start(eid, spawn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(f"ep-{i}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert results == {f"ep-{i}": (f"fc-ep-{i}", True) for i in range(20)}


def test_an_episode_whose_ingest_ended_or_never_spawned_is_spawned_again() -> None:
    """Before: a call that died before freeing its entry kept its episode "deduplicated"
    for ingest_timeout_s + 300 s."""
    from tests.modal_fixtures import MemoryDict

    clock = FakeClock()
    done: set[str] = set()
    pending = modal_app.PendingEpisodes(MemoryDict(), ttl_s=600, clock=clock, call_done=done.__contains__)
    calls = iter(f"fc-{i}" for i in range(10))

    def spawn(eid: str) -> str:
        return next(calls)

    assert pending.start("ep-1", spawn) == ("fc-0", True)
    assert pending.start("ep-1", spawn) == ("fc-0", False)  # running
    done.add("fc-0")  # it failed (or returned) without freeing its entry
    assert pending.start("ep-1", spawn) == ("fc-1", True)
    assert pending.start("ep-1", spawn) == ("fc-1", False)

    # A spawn that fails frees the reservation at once.
    def broken(eid: str) -> str:
        raise ConnectionError("Modal unreachable")

    with pytest.raises(ConnectionError):
        pending.start("ep-2", broken)
    assert pending.start("ep-2", spawn) == ("fc-2", True)
    # A request that died between reserving and spawning holds it reserve_s at most.
    pending.store.put("ep-3", {"call_id": "", "at": clock.t, "by": "dead-request"})
    assert pending.start("ep-3", spawn) == ("", False)
    clock.t += pending.reserve_s
    assert pending.start("ep-3", spawn) == ("fc-3", True)


def test_trigger_logs_at_info(trigger_env: list[str], capsys: pytest.CaptureFixture) -> None:
    """Before: the trigger never configured logging, so its INFO lines vanished."""
    root = logging.getLogger()
    for h in root.handlers[:]:
        if isinstance(h, modal_app._ToStderr):
            root.removeHandler(h)
    root.setLevel(logging.WARNING)
    post({"episode_id": "ep-1"}, BEARER)
    post({"episode_id": "ep-1"}, BEARER)
    err = capsys.readouterr().err
    assert "INFO podembed.modal: trigger: episode ep-1: ingest started as fc-42" in err
    assert "INFO podembed.modal: trigger: episode ep-1 already pending or running as fc-42" in err


# ---------------------------------------------- the executor opens its own map (issue 17)
def test_the_library_runs_an_ephemeral_app_without_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedder_obj
) -> None:
    """Before: only jobs/cli.py could wire an ephemeral app (it imported the deployment file
    and called ModalExecutor.use_map); ``run()`` from the library failed."""
    import contextlib

    from tests.modal_fixtures import MemoryDict

    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    monkeypatch.delenv("MODAL_PROFILE", raising=False)
    login = tmp_path / "modal.toml"
    login.write_text('[default]\ntoken_id = "ak-test"\ntoken_secret = "as-test"\nactive = true\n')
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(login))  # a token is found; no call reaches Modal
    events: list[str] = []

    @contextlib.contextmanager
    def fake_app_run(options):
        events.append("started")
        try:
            yield local_map(embedder_obj.embed.local)
        finally:
            events.append("stopped")

    monkeypatch.setattr(modal_app, "ephemeral_map", fake_app_run)
    monkeypatch.setattr(modal_app, "ROSTER", MemoryDict())
    src = write_rows(tmp_path / "chunks.parquet", sample_rows(episodes=1))
    cfg = modal_minilm_config(tmp_path / "cfg", source=src)
    cfg.write_text(cfg.read_text().replace('kind = "modal"\n', 'kind = "modal"\ndeployed = false\n'))
    config = load_config(cfg)
    assert config.executor.options.deployed is False
    report = run(config, RunOptions(command="backfill"))
    assert report.status == "completed", report.error
    assert report.counts.embedded == len(sample_rows(episodes=1))
    assert events == ["started", "stopped"]  # the executor closed its app when the run ended
