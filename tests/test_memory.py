"""The client caps glibc's malloc arenas, so memory freed by one thread is reused by others."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from pipeline.memory import _libc

# A child process: N threads, alive together, each allocating; then count malloc_info's heaps.
CHILD = textwrap.dedent(
    """
    import ctypes, ctypes.util, os, re, sys, tempfile, threading
    sys.path.insert(0, os.getcwd())
    from pipeline.memory import limit_malloc_arenas
    if sys.argv[1] == "limit":
        assert limit_malloc_arenas(2)
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.fopen.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    together = threading.Barrier(8)
    def work():
        p = libc.malloc(4096)  # first malloc in a thread: glibc picks (or makes) its arena
        together.wait()  # all alive at once: none inherits a finished thread's arena
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    path = tempfile.mktemp()
    fh = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, fh)
    libc.fclose(fh)
    print(len(re.findall(r"<heap nr=", open(path).read())))
    """
)


def _arenas(mode: str) -> int:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_ARENA_MAX from the caller's environment
    cmd = [sys.executable, "-c", CHILD, mode]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(_libc() is None, reason="glibc only")
def test_arenas_capped_for_threads_started_after_the_limit() -> None:
    # Without the cap eight concurrent threads get arenas of their own (fragmentation
    # grows with them); with it, at most two heaps serve every thread.
    assert _arenas("free") > 2
    assert _arenas("limit") <= 2


def test_absorbed_vectors_do_not_keep_the_batch_array_alive() -> None:
    """A record holds its own row, not a view: the executor's per-batch array is freed as
    soon as the batch is absorbed, not when the shard is written (issue 18.3)."""
    import gc
    import weakref

    import numpy as np

    from pipeline.engine.in_flight import InFlight
    from pipeline.engine.shard_work import Prepared
    from pipeline.records import BatchResult, Chunk, ShardSpec
    from pipeline.reporting.report import Counts

    chunks = {f"c{i}": Chunk(f"c{i}", "ep", f"text {i}", sha256=f"{i:064d}") for i in range(4)}
    flight = InFlight(
        prepared=Prepared(ShardSpec("s", {}), chunks, [], [], Counts()),
        remaining=1,
    )
    vectors = np.empty((4, 8), dtype=np.float32)  # owns its memory (a reshape would be a view)
    vectors[:] = np.arange(4 * 8).reshape(4, 8)
    freed = weakref.ref(vectors)
    result = BatchResult(batch_id="b", chunk_ids=list(chunks), vectors=vectors)
    flight.absorb(result, fingerprint="fp", run_id="r", instruction="")
    del vectors, result
    gc.collect()
    assert freed() is None, "a record's embedding still refers to the whole batch's array"
    assert [r.embedding.tolist() for r in flight.records] == [
        list(map(float, range(i * 8, i * 8 + 8))) for i in range(4)
    ]
