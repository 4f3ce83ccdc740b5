"""Helpers shared by the benchmark scripts: paths, tables, JSON results, machine info, FLOPs.

Only the standard library is imported at module level (numpy/torch lazily), so the
scripts start fast and this module also works on the GPU machine, whose Python has
no project virtual environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SAMPLE = ROOT / "data" / "sample_chunks.parquet"
INSTRUCTION = "Represent the podcast transcript for retrieval:"

if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ first, not the root
    sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------- output


def median(xs: Sequence[float]) -> float:
    """Median (of at least one value)."""
    return float(statistics.median(xs))


def fmt(v: Any, nd: int = 3) -> str:
    """A compact cell: floats with ``nd`` significant-ish decimals, thousands separators."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.{nd}g}" if abs(v) < 1 else f"{v:.{nd}f}".rstrip("0").rstrip(".")
    return str(v)


def table(rows: list[dict[str, Any]], columns: list[str] | None = None, title: str = "") -> str:
    """A plain-text table of ``rows`` (dicts), aligned; returns it (and prints nothing)."""
    if not rows:
        return f"{title}\n(no rows)\n" if title else "(no rows)\n"
    cols = columns or list(rows[0])
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [title] if title else []
    out += [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    return "\n".join(out) + "\n"


def write_json(name: str, data: dict[str, Any], path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``data`` to ``benchmarks/results/<name>.json`` (or ``path``); returns the path."""
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return out


def read_json(name: str) -> dict[str, Any] | None:
    """A previous result, or ``None``."""
    p = RESULTS / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def machine() -> dict[str, Any]:
    """Where a figure came from: CPU model, cores, Python, torch (if imported)."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "host": platform.node(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_make_sample() -> ModuleType:
    """``data/make_sample.py`` loaded by path (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "data" / "make_sample.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["make_sample"] = mod
    spec.loader.exec_module(mod)
    return mod


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of ``fn()``."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


# --------------------------------------------------------------------------- FLOPs


def encoder_flops(
    lengths: Sequence[int],
    *,
    layers: int,
    d_model: int,
    inner: int,
    d_ff: int,
    ff_mats: int,
    head_flops_per_seq: int = 0,
    padded_to: int | None = None,
) -> float:
    """Matmul FLOPs of a transformer encoder over sequences of ``lengths`` tokens.

    Per token and layer: Q, K, V, O projections ``2 * 4 * d_model * inner`` plus the
    feed-forward ``2 * ff_mats * d_model * d_ff`` (``ff_mats`` = 3 for a gated GELU,
    2 otherwise). Per sequence of ``s`` tokens and layer: scores and the weighted sum,
    ``2 * 2 * s^2 * inner``. ``head_flops_per_seq`` adds a per-sequence head (a Dense).
    With ``padded_to`` every sequence counts as that long (what the hardware executes
    when a batch is padded to its longest sequence). Norms, softmax, GELU and the
    embedding lookup are left out (well under 1%).
    """
    per_token = 2 * layers * (4 * d_model * inner + ff_mats * d_model * d_ff)
    total = 0.0
    for n in lengths:
        s = padded_to if padded_to is not None else n
        total += s * per_token + 4.0 * layers * inner * s * s + head_flops_per_seq
    return total


def batch_flops(batches: Sequence[Sequence[int]], spec: dict[str, int]) -> tuple[float, float]:
    """(useful, executed) FLOPs of ``batches`` (lists of token counts), each padded to its longest."""
    useful = executed = 0.0
    for b in batches:
        if not b:
            continue
        useful += encoder_flops(b, **spec)
        executed += encoder_flops(b, padded_to=max(b), **spec)
    return useful, executed


def spec_from_hf_config(cfg: Any, head_in: int = 0, head_out: int = 0) -> dict[str, int]:
    """The :func:`encoder_flops` shape of a transformers BERT or T5 config."""
    if hasattr(cfg, "d_ff"):  # T5
        return {
            "layers": cfg.num_layers,
            "d_model": cfg.d_model,
            "inner": cfg.num_heads * cfg.d_kv,
            "d_ff": cfg.d_ff,
            "ff_mats": 3 if str(cfg.feed_forward_proj).startswith("gated") else 2,
            "head_flops_per_seq": 2 * head_in * head_out,
        }
    return {  # BERT-like (MiniLM)
        "layers": cfg.num_hidden_layers,
        "d_model": cfg.hidden_size,
        "inner": cfg.hidden_size,
        "d_ff": cfg.intermediate_size,
        "ff_mats": 2,
        "head_flops_per_seq": 2 * head_in * head_out,
    }


def matmul_rate(n: int, dtype: Any, device: str = "cpu", reps: int = 5, warmup: int = 2) -> float:
    """Measured FLOP/s of an ``n x n @ n x n`` torch matmul: the best of ``reps`` (a peak:
    on a shared machine the median measures the neighbours as much as the hardware)."""
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        torch.matmul(a, b, out=c)
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b, out=c)
        sync()
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / min(times)
