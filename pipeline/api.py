"""The library's entry points that open a config's parts themselves (``run`` and ``search`` do too).

``plan`` and ``status`` only read: the sink and the ledger are opened read-only and closed
before returning, whatever happens.
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.engine.options import RunOptions
from pipeline.engine.selection_check import check_selection
from pipeline.parts import open_parts
from pipeline.reporting.planning import Plan, make_plan
from pipeline.reporting.status import Coverage, coverage


def plan(config: Config, opts: RunOptions | None = None) -> Plan:
    """Dry run of ``opts`` (a backfill of everything by default): chunks, tokens, time and cost.

    A sink or ledger that does not exist yet plans a first run.
    """
    opts = opts or RunOptions()
    parts = open_parts(config, read_only=True, missing_ok=True)
    try:
        check_selection(parts.source, opts.selection, what="plan")
        return make_plan(config, parts, opts)
    finally:
        parts.close()


def status(config: Config, runs: int = 5, *, full: bool = True) -> Coverage:
    """Coverage of the source by the sink: current, stale, missing, dead-lettered; the last ``runs``."""
    parts = open_parts(config, read_only=True)
    try:
        return coverage(config, parts, runs, full=full)
    finally:
        parts.close()
