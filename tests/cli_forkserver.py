"""Run ``podembed`` commands in forked processes that skip the slow imports (stress tests).

``python -m tests.cli_forkserver`` imports torch and sentence-transformers once (about
7 s of CPU, far more on a loaded machine), then forks one child per request; each child
runs the real CLI entry point (``jobs.cli.main``) with the given arguments, in its own
process, which a test can SIGKILL like any other. Requests and answers are JSON lines:

- ``{"run": [args...], "log": path}`` -> ``{"pid": n}`` (stdout and stderr go to ``log``)
- ``{"poll": pid}`` -> ``{"rc": code or null}`` (null while it runs; -9 after SIGKILL)
- ``{"wait": pid}`` -> ``{"rc": code}``

:class:`ForkServer` is the client side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def _status(raw: int) -> int:
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def _child(args: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    code = 1
    try:
        import jobs.cli

        sys.argv = ["podembed", *args]
        jobs.cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    """Answer requests on stdin until it closes."""
    import sentence_transformers  # noqa: F401 - the slow import, paid once
    import torch  # noqa: F401

    import jobs.cli  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    finished: dict[int, int] = {}
    for line in sys.stdin:
        req = json.loads(line)
        if "run" in req:
            pid = os.fork()
            if pid == 0:
                _child(req["run"], req["log"])
            answer: dict[str, Any] = {"pid": pid}
        elif "poll" in req:
            pid = req["poll"]
            if pid not in finished:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    finished[pid] = _status(raw)
            answer = {"rc": finished.get(pid)}
        else:
            pid = req["wait"]
            if pid not in finished:
                finished[pid] = _status(os.waitpid(pid, 0)[1])
            answer = {"rc": finished[pid]}
        print(json.dumps(answer), flush=True)


class ForkServer:
    """The client: start the server, run commands, poll, kill, wait."""

    def __init__(self, cwd: Path, env: dict[str, str], timeout: float = 600.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_forkserver"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._read()
        assert ready == {"ready": True}, ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server ended (rc {self.proc.wait()})")
        return json.loads(line)

    def _ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self, args: list[str], log: Path) -> int:
        """Start ``podembed ARGS`` in a forked child; its pid."""
        return int(self._ask({"run": args, "log": str(log)})["pid"])

    def poll(self, pid: int) -> int | None:
        """The child's exit code, or None while it runs."""
        return self._ask({"poll": pid})["rc"]

    def wait(self, pid: int) -> int:
        """Wait for the child; its exit code (negative: killed by that signal)."""
        return int(self._ask({"wait": pid})["rc"])

    def close(self) -> None:
        """Stop the server."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    serve()
