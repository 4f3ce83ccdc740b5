"""T5 self-attention with the relative-position bias inside a fused attention kernel.

transformers' T5 hands its position bias to SDPA as a float mask that it rebuilds in every
layer (``torch.where`` over batch x heads x s x s); on GPUs that mask sent SDPA to its fp32
math path and attention took ~45% of the kernel time for ~3% of the FLOPs
(BENCHMARKS.md section 5). Two replacements, patched onto the encoder's ``T5Attention``
modules (the model and its weights stay transformers'):

``fused``
    Layer 0 builds one additive mask per batch, position bias plus key padding, in the
    compute dtype (bf16 on GPUs) and in storage aligned for the memory-efficient kernel; the
    other layers reuse it. Attention is ``scaled_dot_product_attention`` with that mask; on
    CUDA it is pinned to the memory-efficient kernel so a silent fall-back to the fp32 math
    path is impossible (an unsupported shape raises instead).
``flex``
    FlexAttention: a ``score_mod`` adds the bias from a (heads x relative position) table of
    a few KB and hides the padded keys, so no mask tensor exists at all. On CUDA the kernel
    is ``torch.compile(flex_attention)`` on its own, compiled once per process; a compiled
    layer (``model.compile``) breaks its graph around it (inside a compiled layer Inductor
    hit an assertion on torch 2.11). On CPU it runs uncompiled, for tests.

Both compute exactly what eager attention computes (T5 does not scale q.k); the tests
check that to 1e-5 in fp32.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ModelError

#: ``model.attention`` values handled here (the others are transformers' own implementations).
PATCHED = ("fused", "flex")

#: The memory-efficient kernel reads the mask in rows aligned to this many elements; an
#: unaligned mask is copied to an aligned one inside SDPA, in every layer.
_MASK_ALIGN = 16


def install(model: Any, mode: str) -> int:
    """Patch every encoder self-attention module of ``model`` to ``mode``; return how many.

    ``model`` is a SentenceTransformer or a transformers model. Raises :class:`ModelError`
    when it holds no T5 encoder attention (the patch is T5-specific).
    """
    if mode not in PATCHED:
        raise ValueError(f"unknown attention mode {mode!r}")
    from transformers.models.t5.modeling_t5 import T5Attention

    cls = _classes()[mode]
    patched = 0
    for module in model.modules():
        if isinstance(module, T5Attention) and not module.is_decoder:
            module.__class__ = cls
            patched += 1
    if not patched:
        raise ModelError(
            f'model.attention: "{mode}" is for T5 encoders (INSTRUCTOR, GTR, sentence-T5) and this '
            'model has none; use "auto", "eager" or "sdpa"'
        )
    return patched


def uninstall(model: Any) -> None:
    """Give every patched module transformers' own attention back (benchmarks switch modes)."""
    if not _CLASSES:
        return
    from transformers.models.t5.modeling_t5 import T5Attention

    for module in model.modules():
        if type(module) in _CLASSES.values():
            module.__class__ = T5Attention


def installed(model: Any) -> str | None:
    """The mode patched onto ``model`` (None when it runs transformers' own attention)."""
    for module in model.modules():
        mode = getattr(type(module), "podembed_mode", None)
        if mode:
            return str(mode)
    return None


_CLASSES: dict[str, type] = {}


def _classes() -> dict[str, type]:
    # Built on first use: importing transformers at module import would slow the CLI's start.
    if _CLASSES:
        return _CLASSES
    import torch
    from transformers.models.t5.modeling_t5 import T5Attention

    class PatchedT5Attention(T5Attention):
        """T5 encoder self-attention with the position bias built once, in layer 0.

        Layer 0 receives no ``position_bias`` and builds the mode's mask with
        :meth:`build_mask`; transformers hands what it returns to every later layer.
        Decoder and cross attention (``key_value_states``, ``cache``) stay transformers' own.
        """

        podembed_mode = ""

        def forward(
            self,
            hidden_states: Any,
            mask: Any = None,
            key_value_states: Any = None,
            position_bias: Any = None,
            cache: Any = None,
            **kw: Any,
        ) -> tuple[Any, Any, None]:
            if key_value_states is not None or cache is not None:
                return super().forward(hidden_states, mask, key_value_states, position_bias, cache, **kw)
            q, k, v = _project(self, hidden_states)
            if position_bias is None:
                position_bias = self.build_mask(q, mask)
            out = self.attend(q, k, v, position_bias)
            return _output(self, out, hidden_states), position_bias, None

        def build_mask(self, q: Any, mask: Any) -> Any:
            raise NotImplementedError

        def attend(self, q: Any, k: Any, v: Any, position_bias: Any) -> Any:
            raise NotImplementedError

    class FusedT5Attention(PatchedT5Attention):
        """Through SDPA with one bias+padding mask per batch."""

        podembed_mode = "fused"

        def build_mask(self, q: Any, mask: Any) -> Any:
            return _sdpa_mask(_bias(self, q), mask, q)

        def attend(self, q: Any, k: Any, v: Any, position_bias: Any) -> Any:
            if torch.compiler.is_compiling():
                # Inside a compiled layer Inductor cannot prove the mask's rows aligned (the
                # length is dynamic), so it padded a copy of the whole batch-sized mask in every
                # layer: 0.48 s of 3.35 s of kernel time on an H200. Outside the graph the
                # memory-efficient kernel reads the aligned mask as it is.
                return _COMPILED_FLEX["sdpa_outside"](q, k, v, position_bias)
            return _sdpa(q, k, v, position_bias)

    class FlexT5Attention(PatchedT5Attention):
        """Through FlexAttention: bias and key padding both in the score_mod, no mask tensor."""

        podembed_mode = "flex"

        def build_mask(self, q: Any, mask: Any) -> Any:
            return (_relative_table(self, q), _key_keep(mask, q))

        def attend(self, q: Any, k: Any, v: Any, position_bias: Any) -> Any:
            table, keep = position_bias
            return _flex(q, k, v, table, keep)

    # Dynamo graph-breaks at a disabled function: a compiled layer leaves FlexAttention to the
    # kernel compiled on its own (see _flex_kernel).
    _COMPILED_FLEX["outside"] = torch.compiler.disable(_flex_impl)
    _COMPILED_FLEX["sdpa_outside"] = torch.compiler.disable(_sdpa)
    _CLASSES.update(fused=FusedT5Attention, flex=FlexT5Attention)
    return _CLASSES


def _project(module: Any, hidden_states: Any) -> tuple[Any, Any, Any]:
    """q, k, v as (batch, heads, s, d_kv)."""
    shape = (*hidden_states.shape[:-1], module.n_heads, module.key_value_proj_dim)
    q = module.q(hidden_states).view(shape).transpose(1, 2)
    k = module.k(hidden_states).view(shape).transpose(1, 2)
    v = module.v(hidden_states).view(shape).transpose(1, 2)
    return q, k, v


def _output(module: Any, out: Any, hidden_states: Any) -> Any:
    """(batch, heads, s, d_kv) back to (batch, s, d_model) through the output projection."""
    out = out.transpose(1, 2).reshape(*hidden_states.shape[:-1], module.inner_dim)
    return module.o(out)


def _bias(module: Any, q: Any) -> Any:
    """T5's relative-position bias, (1, heads, s, s), in the compute dtype."""
    import torch

    s = q.shape[-2]
    if module.has_relative_attention_bias:
        bias = module.compute_bias(s, s, device=q.device)
    else:  # T5 gives layers without the embedding a zero bias when layer 0 did not pass one
        bias = torch.zeros((1, module.n_heads, s, s), device=q.device, dtype=q.dtype)
    # compute_bias returns a permuted view (stride(-1) == heads). CUDA's fused SDPA kernels
    # need stride(-1) == 1 ("No available kernel"); the CPU accepts any stride, so only the
    # layout test (tests/test_gpu_path.py) sees this off a GPU.
    return bias.to(q.dtype).contiguous()


def _key_keep(mask: Any, q: Any) -> Any:
    """(batch, s) bool: which keys are real tokens, from whatever mask transformers built.

    None means no padding. An encoder's mask does not depend on the query row, so row 0 of a
    (batch, 1, q, k) mask is the key mask.
    """
    import torch

    if mask is None:
        return None
    m = mask[:, 0, 0, :]
    if m.dtype == torch.bool:
        return m
    # An additive float mask: 0 where attended, the dtype's minimum where not.
    return m == 0


def _sdpa_mask(bias: Any, mask: Any, q: Any) -> Any:
    """Bias plus key padding as one additive mask in q's dtype, rows aligned for the kernel."""
    import torch

    batch, heads, s = q.shape[0], q.shape[1], q.shape[-2]
    keep = _key_keep(mask, q)
    if keep is None and s % _MASK_ALIGN == 0:
        # No padding: the batch dimension is a broadcast (stride 0), nothing batch-sized exists.
        return bias.expand(batch, heads, s, s)
    width = -(-s // _MASK_ALIGN) * _MASK_ALIGN
    storage = torch.empty((batch, heads, s, width), dtype=q.dtype, device=q.device)
    out = storage[..., :s]
    if keep is None:
        out.copy_(bias.expand(batch, heads, s, s))
    else:
        # The dtype's minimum, as transformers uses: exp() of it is exactly 0 after the max shift.
        floor = torch.tensor(torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device)
        torch.where(keep[:, None, None, :], bias, floor, out=out)
    return out


def _sdpa(q: Any, k: Any, v: Any, attn_mask: Any) -> Any:
    from torch.nn.functional import scaled_dot_product_attention

    if q.device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # Only the memory-efficient kernel takes an arbitrary additive mask at full speed; the
        # math path (what SDPA picks silently otherwise) upcasts to fp32.
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            return scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)
    return scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=1.0)


#: Relative positions kept in the FlexAttention table: ``kv - q`` in ``[-span + 1, span - 1]``.
#: A fixed span keeps the score_mod's index arithmetic free of the batch's length, so one
#: compiled kernel (dynamic in batch and length) serves every batch up to this length.
_TABLE_SPAN = 512


def _relative_table(module: Any, q: Any) -> Any:
    """T5's bias as (heads, 2 * span - 1) fp32, indexed by ``kv - q + span - 1``.

    The bias depends only on ``kv - q``: a table of a few KB that the kernel keeps in cache,
    instead of a (heads, s, s) tensor read for every score.
    """
    import torch

    s = q.shape[-2]
    span = max(_TABLE_SPAN, s)
    if not module.has_relative_attention_bias:
        return torch.zeros((module.n_heads, 2 * span - 1), device=q.device, dtype=torch.float32)
    relative = torch.arange(-(span - 1), span, device=q.device)
    buckets = module._relative_position_bucket(
        relative,
        bidirectional=not module.is_decoder,
        num_buckets=module.relative_attention_num_buckets,
        max_distance=module.relative_attention_max_distance,
    )
    # Rounded through the compute dtype first: eager T5 adds the bias in that dtype.
    table = module.relative_attention_bias(buckets).to(q.dtype).float()
    return table.t().contiguous()


_COMPILED_FLEX: dict[str, Any] = {}


def _flex_kernel(device_type: str) -> Any:
    """``flex_attention`` compiled on its own (once per process) on CUDA; plain elsewhere.

    Uncompiled, FlexAttention materialises the scores. Compiled inside a compiled T5 layer it
    hit an Inductor assertion on torch 2.11 (simd.py ``can_fuse``), so a compiled layer breaks
    its graph around :func:`_flex` and this separately compiled kernel runs there.
    """
    from torch.nn.attention.flex_attention import flex_attention

    if device_type != "cuda":
        return flex_attention
    fn = _COMPILED_FLEX.get(device_type)
    if fn is None:
        import torch

        fn = _COMPILED_FLEX[device_type] = torch.compile(flex_attention, dynamic=True)
    return fn


def _flex_impl(q: Any, k: Any, v: Any, table: Any, keep: Any) -> Any:
    import torch

    offset = (table.shape[-1] - 1) // 2
    if keep is None:

        def add_bias(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return score + table[h, kv_idx - q_idx + offset]

    else:

        def add_bias(score: Any, b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            # Padded keys in the score_mod, not a block mask: no per-batch mask to build, and
            # sorted batches have ~5% padding, so skipping their blocks would save little.
            return torch.where(keep[b, kv_idx], score + table[h, kv_idx - q_idx + offset], -float("inf"))

    return _flex_kernel(q.device.type)(q, k, v, score_mod=add_bias, scale=1.0)


def _flex(q: Any, k: Any, v: Any, table: Any, keep: Any) -> Any:
    import torch

    if torch.compiler.is_compiling():
        # Inside a compiled layer: break the graph here (the wrapper is built in _classes()).
        return _COMPILED_FLEX["outside"](q, k, v, table, keep)
    return _flex_impl(q, k, v, table, keep)
