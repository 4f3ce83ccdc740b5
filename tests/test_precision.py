"""``model.precision = "auto"``: the decision for both kinds of CPU and for GPUs (pure, no
hardware needed), the CPU bf16 path under the non-finite guard (tiny T5 forced into bf16 on
this CPU), and the resolved precision in run reports and ``plan``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from jobs.cli import cli
from pipeline.config import ModelConfig, load_config
from pipeline.engine.options import RunOptions
from pipeline.engine.runner import run
from pipeline.model import model_cache
from pipeline.model.embedder import InstructorEmbedder
from pipeline.model.precision import (
    Resolved,
    cpu_bf16_units,
    detect,
    for_gpu_name,
    parse_cpu_flags,
    read_cpu_flags,
    resolve,
)
from pipeline.reporting.planning import planned_precision
from tests.helpers import ROOT, make_config, sample_rows, vectors_by_id, write_rows
from tests.synthetic_model import TINY

# Abridged /proc/cpuinfo of the two kinds of machine podembed runs on.
XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma bmi2 sha_ni
"""
ZEN4 = "flags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_with_amx_gets_bf16_autocast() -> None:
    r = resolve("auto", "cpu", cpu_flags=parse_cpu_flags(XEON_AMX), cpu_capability="AVX512")
    assert (r.dtype, r.autocast, r.weights, r.label) == ("bf16", True, "fp32", "bf16-autocast")
    assert r.describe() == "auto → bf16-autocast: cpu has amx_bf16, avx512_bf16"
    # AVX512-BF16 without AMX (AMD Zen 4, Intel Cooper Lake) counts too.
    zen4 = resolve("auto", "cpu", cpu_flags=parse_cpu_flags(ZEN4), cpu_capability="AVX512")
    assert zen4.label == "bf16-autocast" and zen4.reason == "cpu has avx512_bf16"


def test_cpu_without_bf16_units_gets_fp32_and_says_why() -> None:
    r = resolve("auto", "cpu", cpu_flags=parse_cpu_flags(EPYC_AVX2), cpu_capability="AVX2")
    assert (r.dtype, r.autocast, r.reduced) == ("fp32", False, False)
    assert r.describe() == "auto → fp32: cpu has no bf16 units (avx2)"
    # AVX-512 alone is not enough, and neither is an Arm bf16 flag (not measured).
    assert resolve("auto", "cpu", cpu_flags={"avx512f"}, cpu_capability="AVX512").dtype == "fp32"
    assert (
        resolve("auto", "cpu", cpu_flags=parse_cpu_flags(GRAVITON)).reason
        == "cpu has no bf16 units (unknown)"
    )


def test_gpus_get_bf16_weights_from_ampere_on() -> None:
    a10g = resolve("auto", "cuda", cuda_capability=(8, 6))
    assert (a10g.dtype, a10g.autocast, a10g.weights) == ("bf16", False, "bf16")
    assert a10g.describe() == "auto → bf16: cuda compute capability 8.6 has bf16 tensor cores"
    assert resolve("auto", "cuda:1", cuda_capability=(9, 0)).label == "bf16"
    t4 = resolve("auto", "cuda", cuda_capability=(7, 5))
    assert t4.label == "fp32" and "7.5 has no bf16" in t4.reason
    assert resolve("auto", "cuda").label == "fp32"  # capability unknown: the safe choice
    assert resolve("auto", "mps").label == "fp32"


def test_explicit_precisions_stay_as_written() -> None:
    for name in ("fp32", "bf16", "fp16"):
        r = resolve(name, "cpu", cpu_flags=parse_cpu_flags(XEON_AMX))
        assert (r.label, r.autocast, r.reason) == (name, False, "set in the config")
    pinned = resolve("bf16-autocast", "cpu", cpu_flags=parse_cpu_flags(EPYC_AVX2))
    assert (pinned.dtype, pinned.autocast, pinned.describe()) == (
        "bf16",
        True,
        "bf16-autocast: set in the config",
    )


def test_remote_gpu_names_resolve_for_plan() -> None:
    assert for_gpu_name("auto", "A10G").describe() == (
        "auto → bf16: A10G: cuda compute capability 8.6 has bf16 tensor cores"
    )
    assert for_gpu_name("auto", "H100:2").label == "bf16"
    assert for_gpu_name("auto", "a100-80gb").label == "bf16"
    assert for_gpu_name("auto", "T4").label == "fp32"
    unknown = for_gpu_name("auto", "X9000")
    assert unknown.dtype == "" and "decided on the device" in unknown.describe()
    assert for_gpu_name("fp32", "A10G").label == "fp32"


def test_parse_cpu_flags_reads_x86_and_arm_lines() -> None:
    assert cpu_bf16_units(parse_cpu_flags(XEON_AMX)) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_units(parse_cpu_flags(EPYC_AVX2)) == []
    assert "bf16" in parse_cpu_flags(GRAVITON) and "avx2" not in parse_cpu_flags(GRAVITON)
    assert parse_cpu_flags("") == frozenset()


def test_detect_on_this_machine_agrees_with_proc_cpuinfo() -> None:
    import torch

    r = detect("auto", "cpu")
    units = cpu_bf16_units(read_cpu_flags())
    if units:
        assert r.label == "bf16-autocast" and r.reason == f"cpu has {', '.join(units)}"
    else:
        cap = torch.backends.cpu.get_cpu_capability().lower()
        assert r.describe() == f"auto → fp32: cpu has no bf16 units ({cap})"


def test_auto_is_the_shipped_default_and_fp16_is_still_refused_for_t5() -> None:
    from pipeline.config import check_fp16
    from pipeline.errors import ConfigError

    for name in ("local.toml", "mongo_local.toml", "production.toml"):
        assert load_config(ROOT / "configs" / name).model.precision == "auto", name
    prod = load_config(ROOT / "configs" / "production.toml")
    assert planned_precision(prod).label == "bf16"  # on the A10G it names
    with pytest.raises(ConfigError, match="fp16 is not allowed"):
        check_fp16(ModelConfig(id="hkunlp/instructor-xl", dimension=768, precision="fp16"))


# ------------------------------------------------------- the CPU bf16 path, guarded
def _bf16_overflow_model(tiny_model_dir: str, dest: Path) -> str:
    """The tiny T5 with a Dense head whose bias (3.4e38) is finite in fp32 but rounds to
    infinity in bf16; Softsign turns that infinity into NaN (inf/inf) and 3.4e38 into 1.0."""
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Dense
    except ImportError:
        from sentence_transformers.models import Dense

    model = SentenceTransformer(tiny_model_dir, device="cpu")
    index, old = next((k, m) for k, m in model._modules.items() if isinstance(m, Dense))
    dense = Dense(old.in_features, old.out_features, bias=True, activation_function=torch.nn.Softsign())
    with torch.no_grad():
        dense.linear.weight.copy_(old.linear.weight)
        dense.linear.bias.zero_()
        dense.linear.bias[:4] = 3.4e38
    model._modules[index] = dense
    model.save(str(dest))
    return str(dest)


@pytest.fixture(scope="module")
def overflow_model(tiny_model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return _bf16_overflow_model(tiny_model_dir, tmp_path_factory.mktemp("bf16-overflow") / "model")


def _cfg(path: str, precision: str) -> ModelConfig:
    return ModelConfig(
        id="tiny-bf16-overflow",
        path=path,
        dimension=TINY.out_dim,
        max_seq_length=128,
        precision=precision,
        device="cpu",
    )


TEXTS = ["a short line about bread", "another line, a bit longer, about telescopes and stars"]


@pytest.mark.parametrize("precision", ["bf16-autocast", "bf16"])
def test_cpu_bf16_non_finite_batch_is_rerun_in_fp32(overflow_model: str, precision: str) -> None:
    fp32 = InstructorEmbedder(_cfg(overflow_model, "fp32")).embed(TEXTS)
    assert np.isfinite(fp32.vectors).all() and not fp32.failed
    emb = InstructorEmbedder(_cfg(overflow_model, precision))
    assert emb.precision.label == precision and emb.device == "cpu"
    p = emb.precision
    raw = emb._encode(emb.model, TEXTS, reduced_precision=True, autocast=p.dtype if p.autocast else "")
    assert not np.isfinite(raw).all(), "the test model must overflow in bf16"
    out = emb.embed(TEXTS)
    assert out.fp32_retries == 1 and not out.failed
    assert np.abs(out.vectors - fp32.vectors).max() <= 1e-6
    if p.autocast:
        import torch

        # fp32 weights already: the retry is the same model without autocast, no second load.
        assert emb._fp32_model() is emb.model
        assert next(emb.model.parameters()).dtype == torch.float32


def test_run_in_bf16_autocast_retries_in_fp32_and_reports_it(overflow_model: str, tmp_path: Path) -> None:
    rows = sample_rows(n=6)
    src = write_rows(tmp_path / "s.parquet", rows)
    out = tmp_path / "out"
    model = {
        "id": "tiny-bf16-overflow",
        "path": overflow_model,
        "dimension": TINY.out_dim,
        "max_seq_length": 128,
        "precision": "bf16-autocast",
        "device": "cpu",
    }
    report = run(make_config(src, out, model=model), RunOptions())
    assert report.status == "completed" and report.counts.embedded == len(rows)
    assert report.counts.dead_lettered == 0 and report.fp32_retries >= 1
    assert report.precision == "bf16-autocast"
    assert report.precision_reason == "bf16-autocast: set in the config"
    vectors = vectors_by_id(out)
    assert len(vectors) == len(rows) and all(np.isfinite(v).all() for v in vectors.values())


def test_move_to_undoes_a_bf16_snapshot_where_the_device_wants_fp32(tiny_model_dir: str) -> None:
    """Modal loads on the CPU in the GPU's precision; on a device that resolves to fp32
    weights, move_to reloads fp32 weights rather than keeping (or upcasting) bf16 ones."""
    import torch

    model_cache.clear()
    cfg = ModelConfig(
        id="tiny", path=tiny_model_dir, dimension=TINY.out_dim, max_seq_length=128, precision="auto"
    )
    hint = resolve("auto", "cuda", cuda_capability=(8, 6))
    emb = InstructorEmbedder(cfg, device="cpu", resolved=hint)
    assert next(emb.model.parameters()).dtype == torch.bfloat16
    emb.move_to("cpu")
    assert emb.precision == detect("auto", "cpu") and emb.precision.weights == "fp32"
    assert next(emb.model.parameters()).dtype == torch.float32
    got = emb.embed(TEXTS).vectors
    want = InstructorEmbedder(dataclasses.replace(cfg, precision="fp32"), device="cpu").embed(TEXTS).vectors
    # fp32 here (AVX2): the very fp32 vectors; bf16 autocast (AMX): close to them.
    assert np.abs(got - want).max() <= (5e-2 if emb.precision.reduced else 1e-6)


# ------------------------------------------------------------- reports and plan
def test_auto_run_and_plan_state_the_precision_and_why(tiny_model_dir: str, tmp_path: Path) -> None:
    rows = sample_rows(n=8)
    src = write_rows(tmp_path / "s.parquet", rows)
    out = tmp_path / "out"
    model = {"id": "tiny", "path": tiny_model_dir, "dimension": TINY.out_dim, "max_seq_length": 128}
    config = make_config(src, out, model={**model, "precision": "auto", "device": "cpu"})
    expected: Resolved = detect("auto", "cpu")

    toml = tmp_path / "c.toml"
    toml.write_text(
        f'[source]\nkind = "parquet"\npath = "{src.as_posix()}"\n'
        f'[sink]\nkind = "parquet"\npath = "{out.as_posix()}"\n'
        f'[model]\nid = "tiny"\npath = "{Path(tiny_model_dir).as_posix()}"\ndimension = {TINY.out_dim}\n'
        f'max_seq_length = 128\nprecision = "auto"\ndevice = "cpu"\n'
        f'[report]\ndir = "{(out / "runs").as_posix()}"\n'
    )
    plan = CliRunner().invoke(cli, ["plan", "--config", str(toml)])
    assert plan.exit_code == 0, plan.output
    assert f"precision: {expected.describe()}" in plan.output
    as_json = json.loads(CliRunner().invoke(cli, ["plan", "--config", str(toml), "--json"]).output)
    assert as_json["precision"] == expected.label and as_json["precision_reason"] == expected.describe()

    report = run(config, RunOptions())
    assert report.status == "completed" and report.counts.embedded == len(rows)
    assert report.precision == expected.label
    assert report.precision_reason == expected.describe() and report.precision_reason.startswith("auto → ")
    assert f"precision: {expected.describe()}" in report.summary()
    (written,) = (out / "runs").glob("*.json")
    assert json.loads(written.read_text())["precision_reason"] == expected.describe()


def test_modal_results_carry_the_containers_precision(tiny_model_dir: str) -> None:
    """The GPU class's answer says what it computed in; the client's results pass it on."""
    from pipeline.modal.executor import ModalExecutor
    from pipeline.modal.options import ModalOptions
    from pipeline.modal.wire import embed_payload
    from pipeline.records import Batch
    from tests.modal_fixtures import local_map

    cfg = ModelConfig(
        id="tiny", path=tiny_model_dir, dimension=TINY.out_dim, max_seq_length=128, precision="bf16-autocast"
    )
    embedder = InstructorEmbedder(cfg, device="cpu")
    # The stand-in container names the configured GPU, as the deployed class does after its CUDA check.
    container = local_map(lambda p: embed_payload(embedder, p, device_name="NVIDIA A10G"))
    executor = ModalExecutor(ModalOptions(), cfg, map_fn=container)
    batches = [Batch(f"b{i}", [f"c{i}"], [TEXTS[i]], [8], 8) for i in range(2)]
    results = list(executor.embed(iter(batches)))
    assert sorted(r.batch_id for r in results) == ["b0", "b1"] and not any(r.error for r in results)
    assert {(r.precision, r.precision_reason) for r in results} == {
        ("bf16-autocast", "bf16-autocast: set in the config")
    }
