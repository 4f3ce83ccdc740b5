"""Bounded batch shapes for the encoder, and ``torch.compile`` over them.

``torch.compile`` specialises on shapes: fed the token-budget batches as they come (any
length from 1 to 512 tokens), it would recompile for nearly every batch. Here each batch's
padded length is rounded up to a multiple of ``model.seq_multiple`` (16 by default with
compile: aligned rows for the attention mask, ~3% extra padding; 64 gives at most 8
lengths up to 512), the compile is regional (the repeated encoder layer is compiled once
and its graph serves all 24 layers: the compile time of one layer, not of the stack) and
dynamic in batch size and length, so a container compiles a handful of graphs once
(4 on the tiny T5 over 10 shapes) and reuses them for the night.

Rounding up only adds padded positions: they are masked out of attention (so the real
tokens' states do not change), cut off again before pooling, and cost up to
``seq_multiple - 1`` extra positions per row. The wrapper sits on the transformers model's
``forward``, which is what sentence-transformers calls, so pooling, the instruction
handling and normalisation are untouched.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: Rounding used when ``model.compile`` is on and ``model.seq_multiple`` is left at 0.
DEFAULT_MULTIPLE = 16


def encoder_of(model: Any) -> Any:
    """The transformers model inside a SentenceTransformer (or ``model`` itself)."""
    for module in model.modules():
        inner = getattr(module, "auto_model", None)
        if inner is not None:
            return inner
    return model


class BoundedShapes:
    """Replaces a transformers encoder's ``forward``: pads to bounded shapes, optionally compiled."""

    def __init__(self, encoder: Any, multiple: int, compile: bool, backend: Any = "inductor") -> None:
        import torch

        self.encoder = encoder
        self.original = encoder.forward
        self.multiple = max(1, multiple)
        self.compiled = compile
        limit = getattr(encoder.config, "max_position_embeddings", None)
        # Absolute-position models (BERT) cannot run past their table; T5 (relative) has none.
        self.limit = int(limit) if isinstance(limit, int) and limit > 0 else None
        self.pad_id = int(getattr(encoder.config, "pad_token_id", 0) or 0)
        #: (rows, length) of every padded batch run so far, for benchmarks and tests.
        self.shapes: set[tuple[int, int]] = set()
        self.lengths: set[int] = set()
        self.blocks: list[Any] = []
        if compile:
            # Headroom over dynamo's recompile limit (8): past it torch silently runs uncompiled.
            cfg = torch._dynamo.config
            wanted = 4 + 4096 // self.multiple
            if hasattr(cfg, "recompile_limit"):
                cfg.recompile_limit = max(cfg.recompile_limit, wanted)
            else:  # torch < 2.6
                cfg.cache_size_limit = max(cfg.cache_size_limit, wanted)
            self.blocks = repeated_layers(encoder)
            for block in self.blocks:
                # Dynamic sizes from the first call: one graph for layer 0 (which builds the
                # mask), one for the others, instead of one per shape.
                block.compile(backend=backend, dynamic=True)

    def _hidden(self, input_ids: Any, attention_mask: Any) -> Any:
        return self.original(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)[
            "last_hidden_state"
        ]

    def padded_length(self, length: int) -> int:
        """``length`` rounded up to the multiple (never past an absolute-position table)."""
        rounded = -(-length // self.multiple) * self.multiple
        if self.limit is not None:
            rounded = min(rounded, max(length, self.limit))
        return rounded

    def __call__(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        extra = {k: v for k, v in kwargs.items() if k != "return_dict" and v is not None}
        if input_ids is None or extra or input_ids.dim() != 2:
            # Anything but plain ids + mask (embeddings, token types, hidden states): as is.
            return self.original(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        rows, length = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        padded = self.padded_length(length)
        # A batch of one is padded to two rows: compiled graphs treat size 1 as a constant.
        padded_rows = max(rows, 2) if self.compiled else rows
        ids, mask = input_ids, attention_mask
        if padded != length or padded_rows != rows:
            ids = input_ids.new_full((padded_rows, padded), self.pad_id)
            mask = attention_mask.new_zeros((padded_rows, padded))
            ids[:rows, :length] = input_ids
            mask[:rows, :length] = attention_mask
            if padded_rows > rows:  # filler rows copy row 0: a row with no real token is NaN
                ids[rows:, :length] = input_ids[:1]
                mask[rows:, :length] = attention_mask[:1]
        self.shapes.add((padded_rows, padded))
        self.lengths.add(padded)
        hidden = self._hidden(ids, mask)
        return BaseModelOutput(last_hidden_state=hidden[:rows, :length])


def repeated_layers(encoder: Any) -> list[Any]:
    """The encoder's repeated layers (T5's ``encoder.block``): the longest ModuleList."""
    import torch

    lists = [m for m in encoder.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(encoder).__name__} has no list of layers to compile")
    return list(max(lists, key=len))


def install(model: Any, multiple: int, compile: bool, backend: Any = "inductor") -> BoundedShapes:
    """Put :class:`BoundedShapes` on ``model``'s encoder (idempotent: replaces an earlier one)."""
    uninstall(model)
    encoder = encoder_of(model)
    wrapper = BoundedShapes(encoder, multiple or DEFAULT_MULTIPLE, compile, backend)
    # An instance attribute: sentence-transformers calls ``auto_model.forward`` directly.
    encoder.forward = wrapper
    log.info(
        "encoder: batch lengths rounded up to a multiple of %d%s",
        wrapper.multiple,
        ", compiled with torch.compile" if compile else "",
    )
    return wrapper


def installed(model: Any) -> BoundedShapes | None:
    """The wrapper on ``model``'s encoder, if any."""
    current = encoder_of(model).__dict__.get("forward")
    return current if isinstance(current, BoundedShapes) else None


def uninstall(model: Any) -> None:
    """Undo :func:`install`: plain forward, layers no longer compiled (benchmarks switch paths)."""
    encoder = encoder_of(model)
    current = encoder.__dict__.get("forward")
    if isinstance(current, BoundedShapes):
        del encoder.forward
        for block in current.blocks:
            # nn.Module.compile() keeps the compiled call here; None restores the plain call.
            block._compiled_call_impl = None
