"""Hub models: downloaded once, at the pinned revision, only the files the model needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.config import ModelConfig

#: What a sentence-transformers model (instructor-xl's layout) needs: configs and
#: tokenizer files (JSON, SentencePiece ``.model``, vocab ``.txt``), the weights of every
#: module (``pytorch_model.bin`` or ``.safetensors``, Dense included). Not TF, Flax, Rust,
#: ONNX or OpenVINO exports, nor the README.
ALLOW_PATTERNS = ("*.json", "*.model", "*.txt", "*.safetensors", "*.bin")
IGNORE_PATTERNS = ("onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "*.onnx", "*training_args.bin")


def download_model(cfg: ModelConfig, download: Callable[..., Any] | None = None) -> str:
    """Fetch ``cfg.id`` at ``cfg.revision`` into the Hugging Face cache; its local path.

    ``download`` stands in for ``huggingface_hub.snapshot_download`` (tests)."""
    if download is None:
        from huggingface_hub import snapshot_download

        download = snapshot_download
    return str(
        download(
            cfg.id,
            revision=cfg.revision or None,
            allow_patterns=list(ALLOW_PATTERNS),
            ignore_patterns=list(IGNORE_PATTERNS),
        )
    )
