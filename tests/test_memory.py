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
