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
from pipeline.embedder import InstructorEmbedder
from pipeline.errors import ConfigError
from pipeline.fingerprint import model_fingerprint
from pipeline.local import LocalExecutor, LocalOptions
from pipeline.modal.executor import ModalExecutor
from pipeline.modal.options import EMBEDDER_CLASS
from pipeline.modal.wire import decode_vectors
from pipeline.records import Batch
from pipeline.runner import RunOptions, run
from tests.helpers import make_config, sample_rows, vectors_by_id, write_rows
from tests.modal_fixtures import local_map, modal_minilm_config

pytestmark = pytest.mark.filterwarnings("ignore:The Embedder.embed function is executing locally:UserWarning")

TEXTS = [
    "  So the telescope arrived on a Tuesday, and honestly we were not ready for it.  ",
    "Welcome back to the show.",
    "Let's talk about sourdough starters and why mine keeps dying every winter, because "
    "I think it has something to do with the temperature in the kitchen.",
]


@pytest.fixture(scope="module")
def minilm_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return modal_minilm_config(tmp_path_factory.mktemp("modal-cfg"))


@pytest.fixture(scope="module")
def embedder_obj(minilm_config: Path):
    """One local instance of the GPU class (its enter hooks run on the first call)."""
    return modal_app.Embedder(config_path=str(minilm_config))


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

    with caplog.at_level(logging.INFO, logger="pipeline.progress"):
        report = modal_app.run_job("ingest", ("pc-astro-ep02",), map_fn=local_map(embedder_obj.embed.local))
    assert report["status"] == "completed" and report["command"] == "ingest"
    # The progress lines an operator reads in `modal app logs`.
    progress = [r.getMessage() for r in caplog.records if r.name == "pipeline.progress"]
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
@pytest.fixture()
def trigger_env(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    spawned: list[str] = []
    monkeypatch.setenv(modal_app.OPTIONS.token_env, "s3cret-token")
    monkeypatch.setattr(modal_app, "spawn_ingest", lambda eid: spawned.append(eid) or "fc-42")
    return spawned


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
    with pytest.raises(Exception) as exc:
        modal_app.trigger.local({"episode_id": "ep-1"}, authorization=header)
    assert getattr(exc.value, "status_code", None) == 401
    assert trigger_env == []


def test_trigger_accepts_the_right_token_and_returns_the_call_id(trigger_env: list[str]) -> None:
    out = modal_app.trigger.local({"episode_id": " ep-1 "}, authorization="Bearer s3cret-token")
    assert out == {"call_id": "fc-42", "episode_id": "ep-1"}
    assert trigger_env == ["ep-1"]
    with pytest.raises(Exception) as exc:
        modal_app.trigger.local({"episode": "ep-1"}, authorization="bearer s3cret-token")
    assert getattr(exc.value, "status_code", None) == 422


def test_trigger_without_a_configured_token_accepts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(modal_app.OPTIONS.token_env, raising=False)
    monkeypatch.setattr(modal_app, "spawn_ingest", lambda eid: pytest.fail("must not spawn"))
    for header in (None, "Bearer ", "Bearer anything"):
        with pytest.raises(Exception) as exc:
            modal_app.trigger.local({"episode_id": "ep-1"}, authorization=header)
        assert getattr(exc.value, "status_code", None) == 503


def test_bearer_token_check_is_constant_time() -> None:
    import inspect

    assert "hmac.compare_digest" in inspect.getsource(modal_app.bearer_token_ok)
    assert modal_app.bearer_token_ok("Bearer abc", "abc")
    assert not modal_app.bearer_token_ok("Bearer abc", "")
