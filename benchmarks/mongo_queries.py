"""Where MongoDB time goes in the scale benchmark's nights: every command our source, sink and
ledger send, timed by pymongo command monitoring and summed per phase, command and query shape.

    python benchmarks/mongo_queries.py 10000 30000     # one fresh process per size

Shapes replace values by their type (``$in`` lists by their length bucket), so queries that
differ only in their data sum together; the server's own time is ``duration_micros`` (the
round trip, as seen by the client, including the server's work).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

SKIP = {
    "lsid",
    "$db",
    "$clusterTime",
    "txnNumber",
    "$readPreference",
    "documents",
    "updates",
    "deletes",
    "cursor",
    "autocommit",
    "startTransaction",
    "writeConcern",
    "readConcern",
    "ordered",
    "comment",
}


def shape(v: Any, depth: int = 0) -> Any:
    """The query's structure with values replaced by type names."""
    if isinstance(v, dict):
        return {k: shape(x, depth + 1) for k, x in v.items() if depth or k not in SKIP}
    if isinstance(v, list | tuple):
        if len(v) > 3:
            return (
                f"[{len(v)}x {type(v[0]).__name__}]"
                if not isinstance(v[0], dict)
                else [shape(v[0], depth + 1), f"...{len(v)}"]
            )
        return [shape(x, depth + 1) for x in v]
    return type(v).__name__


def child(n: int, model: str) -> None:
    import scale
    from pymongo import monitoring

    stats: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    started: dict[int, str] = {}

    class L(monitoring.CommandListener):
        def started(self, e: Any) -> None:
            cmd = e.command
            name = e.command_name
            body = {k: v for k, v in cmd.items() if k not in SKIP}
            if name == "getMore":
                key = f"getMore {cmd.get('collection')}"
            else:
                ops = cmd.get("deletes") or cmd.get("updates")
                if ops:  # writes: the first statement's filter stands for the batch
                    body = {**body, "q": ops[0].get("q"), "ops": f"{len(ops)} statements"}
                key = json.dumps(shape(body), sort_keys=True)[:400]
            started[e.request_id] = key

        def succeeded(self, e: Any) -> None:
            key = started.pop(e.request_id, "?")
            s = stats[(e.command_name, key)]
            s[0] += 1
            s[1] += e.duration_micros / 1e6

        def failed(self, e: Any) -> None:
            self.succeeded(e)

    monitoring.register(L())
    real_print = print

    def hooked(*a: Any, **k: Any) -> None:
        real_print(*a, **k)
        line = a[0] if a else ""
        if isinstance(line, str) and line.startswith("{"):
            ph = json.loads(line)["phase"]
            top = sorted(stats.items(), key=lambda kv: -kv[1][1])
            real_print(
                json.dumps(
                    {
                        "queries": ph,
                        "total_s": round(sum(v[1] for v in stats.values()), 3),
                        "top": [[c, k, v[0], round(v[1], 3)] for (c, k), v in top[:25]],
                    }
                ),
                flush=True,
            )
            stats.clear()

    scale.print = hooked  # type: ignore[attr-defined]
    t = time.perf_counter()
    scale.mongo_child(n, model)
    real_print(json.dumps({"done": n, "s": round(time.perf_counter() - t, 1)}))


def main() -> int:
    if sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3])
        return 0
    from tests import synthetic_model as sm

    tmp = Path(tempfile.mkdtemp(prefix="podembed-bench-mq-"))
    model = sm.build_model(tmp / "tiny-model", sm.TINY)
    for n in sys.argv[1:]:
        subprocess.run([sys.executable, __file__, "--child", n, str(model)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
