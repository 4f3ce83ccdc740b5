"""The INSTRUCTOR embedder: the one code path that turns texts into vectors.

Both executors (in-process and Modal) call :class:`InstructorEmbedder`, so the
instruction handling, the fingerprint and the non-finite guard are identical
wherever a vector is computed. INSTRUCTOR semantics with sentence-transformers:

1. the instruction is a ``prompt`` and is left out of the mean pooling
   (``set_pooling_include_prompt(False)``: only automatic for the literal hub id, so
   we set it always and check it);
2. ``max_seq_length`` is set explicitly (INSTRUCTOR hard-codes 512);
3. texts are stripped (INSTRUCTOR does, sentence-transformers does not);
4. the instruction is prepended with no separator, and vectors are normalized.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config import ModelConfig
from pipeline.errors import ModelError
from pipeline.model import model_cache, precision, t5_attention
from pipeline.model.fingerprint import model_fingerprint, resolve_model_location

log = logging.getLogger(__name__)

#: Vectors whose norm is below this are treated as broken (a normalized vector has norm 1).
MIN_NORM = 1e-3


@dataclass(slots=True)
class EmbedOutput:
    """Vectors for one call, plus which rows are unusable and how long it took."""

    vectors: np.ndarray
    failed: dict[int, str] = field(default_factory=dict)
    compute_s: float = 0.0
    fp32_retries: int = 0


@dataclass(slots=True)
class Prepared:
    """A batch after the host work: stripped texts, and token tensors on (or on their way to)
    the device. ``features`` is None where the installed sentence-transformers has no
    ``preprocess`` (launch then falls back to ``encode``)."""

    texts: list[str]
    prompt: str | None
    features: dict[str, Any] | None = None
    ready: Any = None  # CUDA event: the copy to the device is done
    tokenize_s: float = 0.0


@dataclass(slots=True)
class Launched:
    """A batch whose forward pass is queued: ``vectors`` are valid once ``done`` fires."""

    prepared: Prepared
    vectors: Any  # a numpy array, or a (pinned) host tensor being filled
    done: Any  # CUDA event, or None when ``vectors`` are ready
    start: float
    end: float = 0.0  # when ``vectors`` were ready (``done`` None), for compute_s


def resolve_device(device: str) -> str:
    """``auto`` means the GPU when there is one."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _load(location: str, max_seq_length: int, attention: str = "auto", revision: str = "") -> Any:
    # Imported here: sentence-transformers costs seconds to import and the CLI must start fast.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        kwargs: dict[str, Any] = {}
        if attention != "auto":
            # The patched T5 attentions take the boolean padding mask that "sdpa" builds.
            impl = "sdpa" if attention in t5_attention.PATCHED else attention
            kwargs["model_kwargs"] = {"attn_implementation": impl}
        if revision:  # a hub id pinned to a commit (model.revision)
            kwargs["revision"] = revision
        model = SentenceTransformer(location, device="cpu", **kwargs)
    except OSError as exc:
        raise ModelError(
            f"model: cannot load {location!r}: {exc}. Offline, use a model folder "
            "(model.path) or a package that bundles one (model.package)."
        ) from None
    limit = position_limit(model)
    if limit is not None and max_seq_length > limit:
        # Longer inputs would index past the position table: every long chunk would fail.
        raise ModelError(
            f"model.max_seq_length: {max_seq_length} is more than {location!r} can read "
            f"({limit} positions); set model.max_seq_length to at most {limit}"
        )
    model.max_seq_length = max_seq_length
    model.set_pooling_include_prompt(False)
    if attention in t5_attention.PATCHED:
        t5_attention.install(model, attention)
    return model


def _with_shapes(model: Any, cfg: ModelConfig) -> Any:
    """``model.compile`` / ``model.seq_multiple``: bounded batch shapes, compiled or not."""
    if cfg.compile or cfg.seq_multiple:
        from pipeline.model import encoder_shapes

        encoder_shapes.install(model, cfg.seq_multiple, cfg.compile)
    return model


def position_limit(model: Any) -> int | None:
    """The most tokens the model's encoder can take, or ``None`` (T5: relative positions, no table)."""
    limits: list[int] = []
    for module in model.modules():
        config = getattr(getattr(module, "auto_model", None), "config", None)
        if config is None:
            continue
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if isinstance(positions, int) and positions > 0:
            # RoBERTa-style tables reserve the first pad_token_id + 1 slots.
            offset = (config.pad_token_id or 0) + 1 if "roberta" in str(config.model_type) else 0
            limits.append(positions - offset)
    return min(limits) if limits else None


def check_instructor_semantics(model: Any) -> None:
    """Fail unless every Pooling module leaves the instruction out (rule 1)."""
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling

    poolings = [m for m in model.modules() if isinstance(m, Pooling)]
    if not poolings:
        raise ModelError("model: has no Pooling module; INSTRUCTOR semantics need mean pooling")
    for pooling in poolings:
        if pooling.include_prompt:
            raise ModelError("model: pooling still includes the instruction (include_prompt=True)")


class InstructorEmbedder:
    """Embeds texts exactly as INSTRUCTOR does, with a guard against NaN and zero vectors."""

    def __init__(
        self, cfg: ModelConfig, device: str | None = None, resolved: precision.Resolved | None = None
    ) -> None:
        """``resolved`` overrides the precision decided for ``device`` (the Modal snapshot loads on
        the CPU in the precision the GPU will use)."""
        self.cfg = cfg
        self.location = resolve_model_location(cfg)
        self.device = resolve_device(device or cfg.device)
        self.precision = resolved or precision.detect(cfg.precision, self.device)
        if (
            self.device.startswith("cpu")
            and self.precision.reduced
            and not precision.cpu_bf16_units(precision.read_cpu_flags())
        ):
            log.warning(
                "model.precision=%s: this CPU has no bf16 units (amx_bf16, avx512_bf16); reduced "
                'precision runs about 5x slower than fp32 here. Use "auto" (fp32 on this CPU).',
                cfg.precision,
            )
        start = time.perf_counter()
        self._key = self._cache_key(self.device, self.precision.weights)
        self.model = model_cache.cached(self._key, self._load_for)
        self.load_s = time.perf_counter() - start
        check_instructor_semantics(self.model)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        if dim != cfg.dimension:
            raise ModelError(
                f"model.dimension: config says {cfg.dimension} but {cfg.id} produces {dim}; "
                "fix model.dimension"
            )
        self.fingerprint = model_fingerprint(cfg)
        self._fp32: Any = None
        self._stream: Any = None  # CUDA side stream for host-to-device copies (prepare)
        self._last_done = 0.0  # when the last finished batch's vectors were ready
        self._compile_cache: Any = None  # the mega-cache file, once looked for (compile only)
        self.compile_cache_loaded = False

    def _cache_key(self, device: str, precision: str) -> tuple[Any, ...]:
        cfg = self.cfg
        shapes = (cfg.compile, cfg.seq_multiple)
        return (self.location, cfg.revision, cfg.max_seq_length, cfg.attention, shapes, device, precision)

    def _load_for(self) -> Any:
        model = _load(self.location, self.cfg.max_seq_length, self.cfg.attention, self.cfg.revision)
        return self._place(_with_shapes(model, self.cfg), self.device, self.precision.weights)

    @staticmethod
    def _place(model: Any, device: str, precision: str) -> Any:
        model.to(device)
        if precision != "fp32":
            model.to(_dtype(precision))
        return model

    def move_to(self, device: str) -> None:
        """Move the loaded model to ``device`` (Modal: loaded on CPU for the snapshot), in the
        precision decided for that device."""
        device = resolve_device(device)
        resolved = precision.detect(self.cfg.precision, device)
        if device == self.device and resolved == self.precision:
            return
        new_key = self._cache_key(device, resolved.weights)
        if resolved.weights == "fp32" and self.precision.weights != "fp32":
            # The weights were cast down already: fp32 ones come from disk, not from bf16, at the
            # same revision and with the same shape settings as the first load.
            def load() -> Any:
                cfg = self.cfg
                model = _load(self.location, cfg.max_seq_length, cfg.attention, cfg.revision)
                return self._place(_with_shapes(model, cfg), device, "fp32")

            self.model = model_cache.cached(new_key, load)
        else:
            self._place(self.model, device, resolved.weights)
            model_cache.rekey(self._key, new_key)
        self._key, self.device, self.precision = new_key, device, resolved
        self._fp32 = None  # a fallback copy loaded for the old device stays behind
        self._stream = None
        check_instructor_semantics(self.model)

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (for token counting)."""
        return self.model.tokenizer

    def _encode(
        self,
        model: Any,
        texts: list[str],
        reduced_precision: bool = False,
        autocast: str = "",
        prompt: str | None = None,
    ) -> np.ndarray:
        """One ``encode`` call; ``autocast`` (``bf16``) runs the matrix products in that dtype;
        ``prompt`` replaces the documents' instruction (``""``: none)."""
        import torch

        amp: Any = contextlib.nullcontext()
        if autocast:
            amp = torch.autocast(self.device.split(":", 1)[0], dtype=_dtype(autocast))
        with torch.inference_mode(), amp:
            out = model.encode(
                texts,
                prompt=self.cfg.instruction if prompt is None else (prompt or None),
                normalize_embeddings=self.cfg.normalize,
                batch_size=max(1, len(texts)),
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        vectors = np.ascontiguousarray(out, dtype=np.float32)
        if self.cfg.normalize and reduced_precision:
            # Normalized in bf16/fp16, norms are off by up to ~3e-3: normalize again in fp32.
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                vectors = np.where(norms > 0, vectors / norms, vectors).astype(np.float32)
        return vectors

    def _fp32_model(self) -> Any:
        if self.precision.weights == "fp32":
            return self.model  # fp32 or autocast: the same weights, run without autocast
        if self._fp32 is None:
            key = self._cache_key(self.device, "fp32")

            def load() -> Any:
                model = _load(self.location, self.cfg.max_seq_length, self.cfg.attention, self.cfg.revision)
                return self._place(_with_shapes(model, self.cfg), self.device, "fp32")

            self._fp32 = model_cache.cached(key, load)
        return self._fp32

    def embed(self, texts: list[str], instruction: str | None = None) -> EmbedOutput:
        """Embed ``texts`` in one forward pass. Rows listed in ``failed`` must not be stored.

        ``instruction`` overrides the documents' instruction (``""``: none at all); only
        search uses it, through :meth:`embed_queries`: stored vectors always carry the
        configured one, which is what their fingerprint says.

        The same three steps as :meth:`prepare`, :meth:`launch` and :meth:`finish`, which an
        executor calls separately to tokenize the next batch while this one runs.
        """
        return self.finish(self.launch(self.prepare(texts, instruction)))

    def prepare(self, texts: list[str], instruction: str | None = None) -> Prepared:
        """Host work before a forward pass: strip, tokenize, and start the copy to the device.

        Thread-safe against :meth:`launch` of another batch (executors call it on a worker
        thread). On CUDA the token tensors are pinned and copied on a side stream, so the copy
        overlaps the forward pass running on the default stream.
        """
        stripped = [t.strip() for t in texts]
        prompt = None if instruction is None else instruction.strip()
        prepared = Prepared(stripped, prompt)
        if not texts or not hasattr(self.model, "preprocess"):
            return prepared  # sentence-transformers < 6: launch() goes through encode()
        import torch

        start = time.perf_counter()
        features = self.model.preprocess(stripped, prompt=self._prompt(prompt))
        if self.device.startswith("cuda"):
            stream = self._copy_stream()
            with torch.cuda.stream(stream):
                for key, value in features.items():
                    if isinstance(value, torch.Tensor):
                        features[key] = value.pin_memory().to(self.device, non_blocking=True)
            prepared.ready = torch.cuda.Event()
            prepared.ready.record(stream)
        else:
            for key, value in features.items():
                if isinstance(value, torch.Tensor):
                    features[key] = value.to(self.device)
        prepared.features = features
        prepared.tokenize_s = time.perf_counter() - start
        return prepared

    def launch(self, prepared: Prepared) -> Launched:
        """Start the forward pass and the copy of the vectors back; returns before they arrive.

        On CUDA nothing here waits for the GPU: the vectors land in pinned host memory behind an
        event, so the caller can launch the next batch before :meth:`finish` reads this one.
        """
        start = time.perf_counter()
        if self.cfg.compile and self._compile_cache is None:
            self._load_compiled()
        if not prepared.texts:
            empty = np.zeros((0, self.cfg.dimension), dtype=np.float32)
            return Launched(prepared, empty, None, start, time.perf_counter())
        p = self.precision
        if prepared.features is None:
            vectors = self._encode(
                self.model, prepared.texts, p.reduced, p.dtype if p.autocast else "", prepared.prompt
            )
            return Launched(prepared, vectors, None, start, time.perf_counter())
        import torch

        amp: Any = contextlib.nullcontext()
        if p.autocast:
            amp = torch.autocast(self.device.split(":", 1)[0], dtype=_dtype(p.dtype))
        features = prepared.features
        with torch.inference_mode(), amp:
            if prepared.ready is not None:
                current = torch.cuda.current_stream()
                current.wait_event(prepared.ready)
                for value in features.values():
                    if isinstance(value, torch.Tensor) and value.is_cuda:
                        value.record_stream(current)  # made on the side stream, used on this one
            out = self.model(dict(features))["sentence_embedding"]
            if self.cfg.normalize:
                # As sentence-transformers' encode: normalized in the compute dtype first.
                out = torch.nn.functional.normalize(out, p=2, dim=1)
            if out.is_cuda:
                host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
                host.copy_(out, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
                return Launched(prepared, host, done, start)
        return Launched(prepared, out, None, start, time.perf_counter())

    def finish(self, launched: Launched) -> EmbedOutput:
        """Wait for the vectors of a launched batch; check them; re-run it in fp32 if needed."""
        prepared = launched.prepared
        if launched.done is not None:
            launched.done.synchronize()
            # Queued behind the previous batch: only the time since that one finished is this
            # batch's, or device time (and cost) would count the overlap twice.
            end = time.perf_counter()
            compute_s = end - max(launched.start, self._last_done)
        else:
            end = launched.end
            compute_s = end - launched.start
        self._last_done = end
        vectors = launched.vectors
        if not isinstance(vectors, np.ndarray):
            vectors = self._to_numpy(vectors)
        p = self.precision
        retries = 0
        bad = _bad_rows(vectors)
        if bad and p.reduced:
            # Reduced precision overflows on some inputs (T5 in fp16 does); fp32 is the fallback.
            log.warning("%d non-finite or zero vectors in %s; re-running batch in fp32", len(bad), p.label)
            retry_start = time.perf_counter()
            vectors = self._encode(self._fp32_model(), prepared.texts, prompt=prepared.prompt)
            retries = 1
            bad = _bad_rows(vectors)
            compute_s += time.perf_counter() - retry_start
        return EmbedOutput(vectors=vectors, failed=bad, compute_s=compute_s, fp32_retries=retries)

    def _load_compiled(self) -> None:
        from pipeline.model import compile_cache

        folder = compile_cache.directory(self.cfg.compile_cache)
        self._compile_cache = False
        if folder is not None:
            self._compile_cache = folder / compile_cache.artefact_name(self.cfg.attention)
            self.compile_cache_loaded = compile_cache.load(self._compile_cache)

    def save_compiled(self) -> int:
        """Keep this process's compiled kernels for the next one (``model.compile`` only)."""
        if not self.cfg.compile or not self._compile_cache:
            return 0
        from pipeline.model import compile_cache

        return compile_cache.save(self._compile_cache)

    def _prompt(self, prompt: str | None) -> str | None:
        return self.cfg.instruction if prompt is None else (prompt or None)

    def _to_numpy(self, vectors: Any) -> np.ndarray:
        out = np.ascontiguousarray(vectors.float().numpy(), dtype=np.float32)
        if self.cfg.normalize and self.precision.reduced:
            # Normalized in bf16/fp16, norms are off by up to ~3e-3: normalize again in fp32.
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                out = np.where(norms > 0, out / norms, out).astype(np.float32)
        return out

    def _copy_stream(self) -> Any:
        import torch

        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
        return self._stream

    def embed_queries(self, questions: list[str], instruction: str | None = None) -> np.ndarray:
        """Embed search questions with ``[model].query_instruction``.

        INSTRUCTOR pairs a query instruction with the documents' one, so that questions
        and passages meet in one space. ``instruction`` replaces it (``""``: none), only
        to measure what it is worth.
        """
        prompt = self.cfg.query_instruction if instruction is None else instruction
        with _few_threads(self.device, len(questions)):
            out = self.embed(questions, instruction=prompt)
        if out.failed:
            raise ModelError(f"model: could not embed the question: {next(iter(out.failed.values()))}")
        return out.vectors


@contextlib.contextmanager
def _few_threads(device: str, texts: int) -> Iterator[None]:
    """One CPU thread for a handful of short texts (a search question).

    Splitting a tiny forward pass across threads only adds synchronisation: measured
    here on a busy 2-core machine, one MiniLM question took 2.0 s with 2 threads and
    0.15 s with 1. Batches (many texts) keep every thread.
    """
    if not device.startswith("cpu") or texts > 8:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bad_rows(vectors: np.ndarray) -> dict[int, str]:
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(np.where(np.isfinite(vectors), vectors, 0.0), axis=1)
    bad: dict[int, str] = {}
    for i in np.flatnonzero(~finite):
        bad[int(i)] = "model produced a non-finite vector (NaN/inf), also in fp32"
    for i in np.flatnonzero(finite & (norms < MIN_NORM)):
        bad[int(i)] = "model produced a zero vector, also in fp32"
    return bad
