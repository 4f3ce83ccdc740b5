"""Memory the Modal fan-out holds as a run goes on: it must not grow with the batches.

Runs ``ModalExecutor.embed`` over N generated batches (``--size`` texts of ``--text-bytes``
each, made fresh per batch, as the runner does) against the offline ``.map()`` stand-in
(``tests.modal_fixtures.FakeMap``, lean mode: no per-call history), consuming and dropping
each result. ``tracemalloc`` reports the bytes still allocated while the last result is in
hand (held, over the baseline before the run) and the peak.

    python benchmarks/fanout_memory.py                                  # 100 and 5,000 batches
    python benchmarks/fanout_memory.py --batches 100 2000 --code /path/to/old/tree

``--code`` imports ``pipeline`` from another checkout (to measure the code before a change).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(n_batches: int, size: int, text_bytes: int) -> dict[str, float]:
    from pipeline.config import ModelConfig
    from pipeline.modal.executor import ModalExecutor
    from pipeline.modal.options import ModalOptions
    from pipeline.records import Batch
    from tests.modal_fixtures import FakeMap

    fake = FakeMap(dim=8, workers=10, record=False, delay_s=0.0, load_s=0.0, boot_s=0.0)
    ex = ModalExecutor(
        ModalOptions(max_containers=10, inflight_per_container=4), ModelConfig("m", 8), map_fn=fake
    )
    fake.fingerprint = ex.fingerprint()

    def batches():
        for b in range(n_batches):
            ids = [f"b{b}-c{i}" for i in range(size)]
            texts = [f"{b:08d}-{i:04d} " + "x" * (text_bytes - 14) for i in range(size)]
            yield Batch(f"b{b}", ids, texts, [5] * size, 5 * size)

    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    held = 0
    for seen, _ in enumerate(ex.embed(batches()), start=1):
        if seen == n_batches:
            held = tracemalloc.get_traced_memory()[0] - base
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {
        "batches": n_batches,
        "texts_per_batch": size,
        "text_bytes": text_bytes,
        "payload_mib_total": round(n_batches * size * text_bytes / 2**20, 1),
        "held_mib": round(held / 2**20, 2),
        "peak_mib": round(peak / 2**20, 2),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[100, 5000])
    parser.add_argument("--size", type=int, default=50)
    parser.add_argument("--text-bytes", type=int, default=2048)
    parser.add_argument("--code", default=str(ROOT), help="checkout to import pipeline from")
    args = parser.parse_args()
    sys.path[:0] = [args.code, str(ROOT)] if args.code != str(ROOT) else [str(ROOT)]
    for n in args.batches:
        print(json.dumps(measure(n, args.size, args.text_bytes)), flush=True)


if __name__ == "__main__":
    main()
