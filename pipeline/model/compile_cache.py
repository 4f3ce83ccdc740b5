"""``torch.compile`` paid once per deployment, and only by runs big enough to repay it.

A compiled encoder's first pass cost 13-33 s per process on an H200 (BENCHMARKS.md section
5). Two things keep that off the critical path:

- **the cache**: Inductor's FX graph cache is on, and the compiled artefacts of a process
  are saved as one file (``torch.compiler.save_cache_artifacts``, the "mega-cache") in
  ``model.compile_cache`` (default: ``$HF_HOME/podembed-compile``, the weights Volume on
  Modal). A later process loads it before its first compile (``load_cache_artifacts``)
  and compiles from the cache: seconds instead of tens of seconds. The file is named by
  torch version, GPU and attention kernel, so a new torch or GPU type compiles afresh.
- **the decision**: a run compiles only when it plans at least ``model.compile_min_chunks``
  chunks; a per-episode ingest (hundreds of chunks) never waits for a compile.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Default of ``model.compile_min_chunks``: about 25 s of compile against ~15% saved per chunk
#: at ~400 chunks/s (H200) pays back after ~10k chunks; twice that leaves a margin for GPUs
#: where the compile costs more than it saves.
COMPILE_MIN_CHUNKS = 20_000


def decide(compile: bool, planned_chunks: int | None, min_chunks: int = COMPILE_MIN_CHUNKS) -> bool:
    """Whether to compile: ``model.compile`` on, and a run of at least ``min_chunks``.

    ``planned_chunks`` None (no run plan: a benchmark, a pre-flight) keeps the setting.
    """
    if not compile:
        return False
    if planned_chunks is None:
        return True
    return planned_chunks >= min_chunks


def directory(configured: str = "") -> Path | None:
    """Where compiled artefacts are kept: ``configured``, else ``$HF_HOME/podembed-compile``."""
    if configured:
        return Path(configured)
    hf_home = os.environ.get("HF_HOME")
    return Path(hf_home) / "podembed-compile" if hf_home else None


def artefact_name(attention: str, device_name: str = "") -> str:
    """The mega-cache file for this torch, GPU and attention kernel."""
    import torch

    if not device_name and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name()
    raw = f"compile-{torch.__version__}-{device_name or 'cpu'}-{attention}.bin"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", raw)


def enable_fx_cache() -> None:
    """Turn Inductor's FX graph cache on (the default in recent torch; explicit here)."""
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
    except Exception:  # an old torch without the knob: the environment variable remains
        pass


def load(path: Path) -> bool:
    """Load a saved mega-cache into this process's compile caches; False when there is none."""
    enable_fx_cache()
    if not path.is_file():
        return False
    import torch

    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as exc:  # a stale or foreign file: compile afresh, never fail the run
        log.warning("compile cache %s not loaded (%s); compiling afresh", path, exc)
        return False
    log.info("compile cache loaded from %s", path)
    return True


def save(path: Path) -> int:
    """Save this process's compiled artefacts to ``path`` (atomically); bytes written, 0 if none."""
    import torch

    try:
        saved: Any = torch.compiler.save_cache_artifacts()
    except Exception as exc:
        log.warning("compile cache not saved (%s)", exc)
        return 0
    if not saved:
        return 0
    data = saved[0]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only Volume: the next process compiles again
        log.warning("compile cache not saved to %s (%s)", path, exc)
        return 0
    log.info("compile cache saved to %s (%d bytes)", path, len(data))
    return len(data)
