"""The bill: one module prices reports and plans, part by part (pipeline/reporting/cost.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import CostConfig
from pipeline.reporting.cost import (
    Footprint,
    Prices,
    Usage,
    bill_usage,
    device_cost_usd,
    make_bill,
    padding_ratio,
)
from pipeline.reporting.report import RunReport

A10G = Prices.of(CostConfig())
MODAL = Footprint(gpu_cpu=2.0, gpu_memory_gib=12.0, job_cpu=1.0, job_memory_gib=2.0, idle_s=15.0)


def test_list_prices_are_the_defaults() -> None:
    assert A10G.gpu_per_s == pytest.approx(0.000306, rel=0.01)
    assert A10G.cpu_core_per_s == 0.0000131 and A10G.memory_gib_per_s == 0.00000222


def test_parts_add_up_and_are_priced_with_the_reservations() -> None:
    bill = make_bill(
        compute_s=1000.0,
        load_s=50.0,
        boot_s=20.0,
        failed_s=300.0,
        failed_attempts=1,
        containers=4,
        job_s=200.0,
        footprint=MODAL,
        prices=A10G,
    )
    assert bill.idle_s == 60.0 and bill.gpu_container_s == 1000 + 50 + 20 + 300 + 60
    gpu_rate = A10G.gpu_per_s + 2 * 0.0000131 + 12 * 0.00000222
    assert bill.parts_usd["compute"] == pytest.approx(1000 * gpu_rate, rel=1e-5)
    assert bill.parts_usd["failed"] == pytest.approx(300 * gpu_rate, rel=1e-5)
    assert bill.parts_usd["job"] == pytest.approx(200 * (0.0000131 + 2 * 0.00000222), rel=1e-5)
    assert bill.total_usd == pytest.approx(sum(bill.parts_usd.values()), abs=1e-5)
    assert bill.total_usd == pytest.approx(
        bill.gpu_usd + bill.gpu_cpu_usd + bill.gpu_memory_usd + bill.job_usd, abs=1e-5
    )
    # Cores and memory of a GPU container add ~17% to the GPU's own price (the figure).
    assert (bill.gpu_cpu_usd + bill.gpu_memory_usd) / bill.gpu_usd == pytest.approx(0.173, abs=0.005)


def test_an_in_process_run_bills_its_device_time_only() -> None:
    report = RunReport(
        run_id="r", command="backfill", status="completed", selection="all", source="s", sink="k",
        executor="local", model_fingerprint="m/x", instruction="i", query_instruction="q",
        started_at="t", device_s=100.0, model_load_s=10.0, wall_s=130.0, hourly_usd=1.10,
    )  # fmt: skip
    report.finalize(Usage(devices={"cpu": 3}), A10G)
    assert report.cost_usd == pytest.approx(device_cost_usd(100.0, 1.10), abs=1e-6)
    assert report.billed_usd == pytest.approx(report.cost_usd, abs=1e-6)
    assert report.devices == {"cpu": 3} and report.bill.job_s == 0.0 and report.bill.idle_s == 0.0
    assert "billed (estimate)" not in report.summary() and "served by: cpu (3 batches)" in report.summary()


def test_a_modal_run_report_carries_the_whole_bill() -> None:
    report = RunReport(
        run_id="r", command="backfill", status="completed", selection="all", source="s", sink="k",
        executor="modal", model_fingerprint="m/x", instruction="i", query_instruction="q",
        started_at="t", device_s=2280.0, model_load_s=140.0, wall_s=300.0, hourly_usd=1.10,
    )  # fmt: skip
    usage = Usage(
        devices={"NVIDIA A10G": 700},
        containers=10,
        boot_s=30.0,
        failed_s=900.0,
        failed_attempts=1,
        footprint=MODAL,
    )
    report.finalize(usage, A10G)
    bill = report.bill
    assert (bill.compute_s, bill.load_s, bill.boot_s, bill.failed_s) == (2140.0, 140.0, 30.0, 900.0)
    assert bill.idle_s == 150.0 and bill.job_s == 300.0 and bill.containers == 10
    assert report.billed_usd > report.cost_usd * 1.5  # a hung batch costs more than the night
    text = report.summary()
    assert "served by: NVIDIA A10G (700 batches) in 10 containers" in text
    assert "billed (estimate): $" in text and "failed attempts 900s in 1" in text
    saved = json.loads(json.dumps(report.to_dict()))
    assert saved["bill"]["parts_usd"]["idle"] > 0 and saved["devices"] == {"NVIDIA A10G": 700}


def test_padding_ratio_and_the_copies_are_gone() -> None:
    assert padding_ratio(103, 100) == 1.03 and padding_ratio(0, 0) == 1.0
    root = Path(__file__).resolve().parents[1] / "pipeline"
    for name in ("reporting/report.py", "reporting/planning.py", "engine/batching.py"):
        text = (root / name).read_text()
        assert "/ 3600" not in text and "def padding_ratio" not in text, name


def test_readme_cost_example_is_what_the_cost_module_computes() -> None:
    """The worked example (a 100k-chunk night, docs/operations.md) is this module's output."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    bill = bill_usage(
        compute_s=1450.0,
        load_s=100.0,
        job_s=300.0,
        usage=Usage(containers=10, boot_s=40.0, footprint=MODAL),
        prices=A10G,
    )
    old = device_cost_usd(1450.0 + 100.0, 1.10)
    for figure in (
        f"${old:.2f}",
        f"${bill.total_usd:.2f}",
        f"${bill.parts_usd['compute']:.3f}",
        f"${bill.parts_usd['idle']:.3f}",
        f"${bill.parts_usd['job']:.4f}",
        f"{bill.gpu_container_s:,.0f}",
    ):
        assert figure in readme, figure


def test_plan_estimates_the_same_parts_for_a_modal_run(tmp_path: Path) -> None:
    from pipeline.engine.options import RunOptions
    from pipeline.parts import open_parts
    from pipeline.reporting.planning import make_plan
    from tests.helpers import make_config, sample_rows, write_rows

    src = write_rows(tmp_path / "in.parquet", sample_rows(episodes=3))
    cost = {
        "device": "A10G",
        "hourly_usd": 1.10,
        "tokens_per_second": 1000.0,
        "devices": 2,
        "cold_start_s": 15.0,
    }
    config = make_config(src, tmp_path / "out", executor={"kind": "modal"}, cost=cost)
    parts = open_parts(config)
    try:
        plan = make_plan(config, parts, RunOptions())
    finally:
        parts.close()
    bill = plan.est_bill
    compute = plan.padded_tokens / 1000.0
    assert plan.containers == 2 and bill.containers == 2
    assert bill.compute_s == pytest.approx(compute, abs=1e-3) and bill.boot_s == 30.0
    assert bill.idle_s == 2 * 15.0 and bill.failed_s == 0.0
    assert bill.job_s == pytest.approx(plan.est_wall_s) and bill.parts_usd["job"] > 0
    assert plan.est_billed_usd == pytest.approx(sum(bill.parts_usd.values()), abs=1e-5)
    assert plan.est_billed_usd > plan.est_cost_usd  # the old single figure undercounts
    assert "billed (estimate, 2 containers)" in plan.summary()
