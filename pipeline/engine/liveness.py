"""Who a run is, and whether a run seen in a ledger is certainly dead.

A run's *owner* is one process: ``host:pid:random``. Stores that cannot rely on a
kernel lock (MongoDB, reached from many hosts) record the owner's
:class:`ProcessIdentity` beside its claims, so that a run on the same machine can tell
a holder killed with ``kill -9`` from a live one at once, instead of waiting for its
lease to expire. The answer is "dead" only when it is certain: same host, same kernel
boot, same PID namespace, and that PID is gone or belongs to a process started later.

Inside Modal, containers may share a hostname, a boot id and a PID namespace while being
different machines for all that matters: a process "gone" from this container's view may
be alive in another. There a run is identified by its container too (``MODAL_TASK_ID``):
a run in another container than this one is never judged dead from here; only its
lease decides.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(slots=True, frozen=True)
class ProcessIdentity:
    """Enough to recognise one process on one machine, even after its PID is reused."""

    host: str
    pid: int
    boot_id: str = ""  # the kernel's boot id: PIDs restart at every boot
    pid_ns: str = ""  # the PID namespace: containers on one kernel reuse PIDs
    start_ticks: int = 0  # when the process started, in clock ticks since boot
    task_id: str = ""  # the Modal container (MODAL_TASK_ID); "" outside Modal

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for a ledger."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any) -> ProcessIdentity | None:
        """Read back :meth:`to_dict` (``None`` for anything else)."""
        if not isinstance(doc, dict):
            return None
        try:
            return cls(
                host=str(doc.get("host", "")),
                pid=int(doc.get("pid", 0)),
                boot_id=str(doc.get("boot_id", "")),
                pid_ns=str(doc.get("pid_ns", "")),
                start_ticks=int(doc.get("start_ticks", 0)),
                task_id=str(doc.get("task_id", "")),
            )
        except (TypeError, ValueError):
            return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _pid_ns() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (ticks since boot); ``None`` if no such process (Linux ``/proc``).

    A zombie (killed, not yet reaped by its parent) counts as no process.
    """
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat.rpartition(")")[2].split()
    if fields and fields[0] in ("Z", "X"):
        return None
    try:
        return int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except (IndexError, ValueError):
        return 0


@functools.cache
def current() -> ProcessIdentity:
    """This process (cached: it does not change while the process lives)."""
    pid = os.getpid()
    return ProcessIdentity(
        host=socket.gethostname(),
        pid=pid,
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        pid_ns=_pid_ns(),
        start_ticks=start_ticks(pid) or 0,
        task_id=os.environ.get("MODAL_TASK_ID", ""),
    )


def new_owner() -> str:
    """A unique owner id for one run of this process: ``host:pid:random``."""
    me = current()
    return f"{me.host}:{me.pid}:{uuid.uuid4().hex[:8]}"


def is_dead(other: ProcessIdentity | None) -> bool:
    """True only if ``other`` certainly no longer runs (see the module docstring)."""
    if other is None:
        return False
    me = current()
    if (me.task_id or other.task_id) and me.task_id != other.task_id:
        return False  # another container (or one side in none): the lease decides
    if not (me.boot_id and me.pid_ns and other.boot_id and other.pid_ns):
        return False
    if (other.host, other.boot_id, other.pid_ns) != (me.host, me.boot_id, me.pid_ns):
        return False
    if other.pid == me.pid:
        return other.start_ticks != me.start_ticks
    ticks = start_ticks(other.pid)
    if ticks is None:
        return True
    return bool(other.start_ticks) and ticks != other.start_ticks


TMP_MARK = ".tmp-"  # temp files are named .<name>.tmp-<pid> and renamed into place when complete


def stale_temp_files(folder: Path, *, ours_too: bool = False) -> list[Path]:
    """Temp files in ``folder`` whose writer is gone: no process runs under their PID here.

    A process killed between writing a temp file and renaming it leaves it behind. A live
    PID's file is kept (a PID reused since then only delays the cleanup); this process's
    own files count as stale only with ``ours_too`` (its caller knows it writes none now).
    """
    stale: list[Path] = []
    for path in folder.glob(f".*{TMP_MARK}*"):
        pid = path.name.rpartition(TMP_MARK)[2]
        if not pid.isdigit():
            continue
        if int(pid) == os.getpid():
            if ours_too:
                stale.append(path)
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.append(path)
        except PermissionError:  # alive, another user's
            pass
    return stale
