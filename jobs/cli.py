"""The ``podembed`` command line: parses arguments, wires library parts, sets the exit code.

Exit codes: 0 done (dead-lettered chunks included), 1 failed, 2 bad usage or config,
130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import json
import logging
import shlex
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from pipeline.errors import PodembedError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _fail(exc: PodembedError) -> None:
    click.echo(f"podembed: error: {exc}", err=True)
    sys.exit(exc.exit_code)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into a one-line message and the documented exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PodembedError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("podembed: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper


def _load(config_path: str | None, executor: str | None) -> Any:
    from pipeline.config import load_config, with_executor

    if config_path is None:  # `podembed --config FILE plan`: the option before the subcommand
        ctx = click.get_current_context(silent=True)
        config_path = ctx.find_root().params.get("config_path") if ctx is not None else None
    config = load_config(config_path)
    return with_executor(config, executor) if executor else config


def _progress(config: Any, command: str, recorded: Callable[[], None]) -> Any:
    """A bar on a terminal; elsewhere (cron, CI, a pipe) progress lines on stderr.

    ``recorded`` is called when the runner closes the progress, right after it recorded the
    run's outcome in the ledger."""
    from pipeline.reporting.progress import BarProgress, LogProgress, Progress

    inner = BarProgress(command) if sys.stderr.isatty() else LogProgress.from_config(config, command)

    class Shown(Progress):
        def planned(self, shards: int, estimated_chunks: int, limit: int | None) -> None:
            inner.planned(shards, estimated_chunks, limit)

        def shard_decided(self, prepared: Any) -> None:
            inner.shard_decided(prepared)

        def loading(self, what: str) -> None:
            inner.loading(what)

        def loaded(self) -> None:
            inner.loaded()

        def shard_prepared(self, prepared: Any) -> None:
            inner.shard_prepared(prepared)

        def dispatched(self, batch: Any) -> None:
            inner.dispatched(batch)

        def settled(self, result: Any) -> None:
            inner.settled(result)

        def shard_written(self, finished: bool) -> None:
            inner.shard_written(finished)

        def close(self, status: str) -> None:
            recorded()
            inner.close(status)

    return Shown()


def _interrupt_signals() -> Callable[[], None]:
    """SIGINT and SIGTERM stop a run like Ctrl-C; returns the call that ends this once the
    run's outcome is recorded."""

    # Preemption and `kill` send SIGTERM: stop like Ctrl-C, keeping what is done. SIGINT is
    # set too because a process started in the background by a shell or some schedulers
    # inherits it as ignored, and then Ctrl-C and `kill -INT` would do nothing.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)

    def recorded() -> None:
        # The ledger holds the outcome: a late signal must not turn it into exit 130, nor
        # kill the process with -15 (Python resets handlers to the default while it exits).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    return recorded


def _execute(ctx: click.Context, command: str, opts_kwargs: dict[str, Any], as_json: bool) -> None:
    from pipeline.engine.options import RunOptions
    from pipeline.engine.runner import run
    from pipeline.engine.selection_check import check_selection

    config = _load(ctx.params.get("config_path"), ctx.params.get("executor"))
    opts = RunOptions(command=command, **opts_kwargs)
    recorded = _interrupt_signals()

    report = run(
        config,
        opts,
        progress=_progress(config, command, recorded),
        # A typo in --episode/--podcast is told (exit 2) before anything is claimed or run.
        on_parts=lambda parts: check_selection(parts.source, opts.selection, what=command),
    )
    if report.status == "interrupted":
        report.resume_hint = "interrupted; resume with: " + shlex.join([_program(), *sys.argv[1:]])
    click.echo(report.summary(), err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    if report.status == "interrupted":
        sys.exit(EXIT_INTERRUPTED)
    if report.status != "completed":
        sys.exit(EXIT_FAILED)


def _program() -> str:
    """How to call podembed again: ``podembed`` when that is on PATH, else the path it was
    started by (``.venv/bin/podembed`` in a shell that did not activate the venv)."""
    import os
    import shutil

    invoked = sys.argv[0] if sys.argv else ""
    if os.path.basename(invoked) != "podembed":
        return "podembed"  # python -m jobs.cli, a test harness
    on_path = shutil.which("podembed")
    if on_path and os.path.realpath(on_path) == os.path.realpath(invoked):
        return "podembed"
    return invoked


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON on stdout.")(fn)
    fn = click.option("--limit", type=click.IntRange(min=1), help="Embed at most N chunks this run.")(fn)
    fn = click.option(
        "--executor", type=click.Choice(["local", "modal"]), help="Where the model runs (overrides config)."
    )(fn)
    fn = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="TOML config (default: configs/local.toml).",
    )(fn)
    return fn


def _filters(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--since", help="Only episodes published on or after this date (YYYY-MM-DD).")(fn)
    fn = click.option("--podcast", "podcasts", multiple=True, help="Only this podcast (repeatable).")(fn)
    fn = click.option("--episode", "episodes", multiple=True, help="Only this episode (repeatable).")(fn)
    return fn


def _selection(episodes: tuple[str, ...], podcasts: tuple[str, ...], since: str | None) -> Any:
    from pipeline.engine.selection import parse_selection

    return parse_selection(episodes, podcasts, since)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="podembed")
@click.option("-v", "--verbose", count=True, help="More log output on stderr.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML config for any command (a command's own --config wins).",
)
def cli(verbose: int, config_path: str | None) -> None:
    """podembed: embed podcast transcript chunks with an INSTRUCTOR model, incrementally.

    \b
    Every run checkpoints: interrupt it and run the same command again to resume.
    Default config: configs/local.toml (Parquet in data/, bundled MiniLM, this machine).
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@cli.command()
@_common
@click.option("--prune", is_flag=True, help="Delete vectors of chunks that left the source.")
@click.option("--retry-failed", is_flag=True, help="Retry chunks the model failed on before.")
@click.option(
    "--full", is_flag=True, help="Read the whole source, not only what changed since the last completed run."
)
@click.pass_context
@_guard
def backfill(
    ctx: click.Context,
    config_path: str | None,
    executor: str | None,
    limit: int | None,
    as_json: bool,
    prune: bool,
    retry_failed: bool,
    full: bool,
) -> None:
    """Embed every chunk that is new, changed, or embedded by another model."""
    _execute(
        ctx, "backfill", {"limit": limit, "prune": prune, "retry_failed": retry_failed, "full": full}, as_json
    )


@cli.command()
@_common
@_filters
@click.option("--retry-failed", is_flag=True, help="Retry chunks the model failed on before.")
@click.pass_context
@_guard
def reindex(
    ctx: click.Context,
    config_path: str | None,
    executor: str | None,
    limit: int | None,
    as_json: bool,
    episodes: tuple[str, ...],
    podcasts: tuple[str, ...],
    since: str | None,
    retry_failed: bool,
) -> None:
    """Re-embed everything, or the chunks selected by --episode/--podcast/--since, even if current."""
    selection = _selection(episodes, podcasts, since)
    _execute(
        ctx,
        "reindex",
        {"selection": selection, "force": True, "limit": limit, "retry_failed": retry_failed},
        as_json,
    )


@cli.command()
@_common
@click.argument("episode_id")
@click.pass_context
@_guard
def ingest(
    ctx: click.Context,
    config_path: str | None,
    executor: str | None,
    limit: int | None,
    as_json: bool,
    episode_id: str,
) -> None:
    """Embed one episode now (only what is new or changed in it).

    With the Modal executor this starts the deployed ingest_episode and prints its call id.
    """
    from pipeline.engine.selection import parse_episode_id
    from pipeline.registry import resolve

    episode_id = parse_episode_id(episode_id)
    config = _load(config_path, executor)
    # An executor that runs jobs elsewhere (Modal: the deployed ingest_episode) starts it
    # there and returns at once; the run report lands in the ledger.
    submitted = resolve("executor", config.executor.kind).submit_ingest(config, episode_id, limit)
    if submitted is not None:
        doc, message = submitted
        if as_json:
            click.echo(json.dumps(doc))
        else:
            click.echo(message, err=True)
            click.echo(doc.get("call_id", ""))
        return
    selection = _selection((episode_id,), (), None)
    _execute(ctx, "ingest", {"selection": selection, "limit": limit}, as_json)


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@click.option(
    "--dead-letters",
    "show_dead",
    type=click.IntRange(min=0),
    default=0,
    help="Also list the N newest dead letters.",
)
@click.option("--full", is_flag=True, help="Check every chunk (exact, reads the whole source).")
@_guard
def status(config_path: str | None, as_json: bool, show_dead: int, full: bool) -> None:
    """Coverage: total, current, stale, missing and dead-lettered chunks; the last runs."""
    from pipeline.parts import open_parts
    from pipeline.reporting.status import coverage

    config = _load(config_path, None)
    parts = open_parts(config, read_only=True)
    try:
        cov = coverage(config, parts, full=full)
        dead = parts.checkpoint.list_dead_letters(show_dead) if show_dead else []
    finally:
        parts.close()
    if as_json:
        doc = cov.to_dict()
        doc["dead_letters"] = [d.__dict__ if hasattr(d, "__dict__") else _slots(d) for d in dead]
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    click.echo(cov.summary())
    for d in dead:
        click.echo(f"  dead: {d.chunk_id} [{d.field}] {d.reason} (last seen {d.last_seen})")


def _slots(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


@cli.command()
@_common
@_filters
@click.option("--force", is_flag=True, help="Plan a reindex (everything selected), not a backfill.")
@click.pass_context
@_guard
def plan(
    ctx: click.Context,
    config_path: str | None,
    executor: str | None,
    limit: int | None,
    as_json: bool,
    episodes: tuple[str, ...],
    podcasts: tuple[str, ...],
    since: str | None,
    force: bool,
) -> None:
    """Dry run: what would be embedded, how many tokens, estimated time and cost."""
    import pipeline

    config = _load(config_path, executor)
    opts = pipeline.RunOptions(
        command="reindex" if force else "backfill",
        selection=_selection(episodes, podcasts, since),
        force=force,
        limit=limit,
    )
    result = pipeline.plan(config, opts)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())


# `plan` shares the run options; two of them mean something else for a dry run.
_PLAN_HELP = {
    "limit": "Plan what `--limit N` would embed: at most N chunks, the rest counted as deferred.",
    "as_json": "Print the plan as JSON on stdout.",
}
for _param in plan.params:
    if isinstance(_param, click.Option) and _param.name in _PLAN_HELP:
        _param.help = _PLAN_HELP[_param.name]


# --- Search ---------------------------------------------------------------------------------
def _mmss(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    total = max(0, round(seconds))
    return f"{total // 60:02d}:{total % 60:02d}"


@cli.command("search")
@click.argument("question")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config.")
@click.option(
    "-k",
    "--k",
    "k",
    type=click.IntRange(min=1, max=1000),
    default=10,
    show_default=True,
    help="Hits to show.",
)
@_filters
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON on stdout.")
@_guard
def search_cmd(
    question: str,
    config_path: str | None,
    k: int,
    episodes: tuple[str, ...],
    podcasts: tuple[str, ...],
    since: str | None,
    as_json: bool,
) -> None:
    """Find the passages nearest to QUESTION (embedded with [model].query_instruction)."""
    import time

    from pipeline.engine.selection_check import check_selection
    from pipeline.reporting.search import Searcher

    config = _load(config_path, None)
    filters = _selection(episodes, podcasts, since)
    searcher = Searcher(config)
    try:
        # Filters that match nothing are told before the model loads (seconds to minutes).
        check_selection(searcher.source, filters, what="search", require_match=True)
        start = time.perf_counter()
        searcher.embedder  # noqa: B018 - load the model first, so the timing below is the search's
        load_s = time.perf_counter() - start
        hits = searcher.search(question, k, filters)
        stats = searcher.stats
    finally:
        searcher.close()
    for notice in stats.notices:
        click.echo(f"podembed: {notice}", err=True)
    if as_json:
        doc = {
            "question": question,
            "k": k,
            "filters": filters.describe(),
            "method": stats.method,
            "scanned": stats.scanned,
            "model_load_s": round(load_s, 3),
            "search_s": round(stats.total_s, 4),
            "hits": [h.to_dict() for h in hits],
        }
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    for h in hits:
        click.echo(
            f"{h.rank:>2}. {h.score:.3f}  {h.chunk_id}  episode {h.episode_id}  "
            f"podcast {h.podcast_id or '-'}  {_mmss(h.start_s)}–{_mmss(h.end_s)}"
        )
        click.echo(f"    {h.snippet}")
    scanned = f", {stats.scanned} vectors scanned" if stats.method == "exact" else ""
    click.echo(
        f"{len(hits)} hits in {stats.total_s:.3f} s "
        f"({stats.method}{scanned}; model loaded in {load_s:.1f} s)",
        err=True,
    )


@cli.command("index")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config.")
@_guard
def index_cmd(config_path: str | None) -> None:
    """Create the vector search index of the sink (MongoDB Atlas), or print its definition.

    Idempotent: an index with the same definition is left alone, another one is updated.
    On a server without Atlas Vector Search the definition is printed on stdout (exit 0).
    """
    from pipeline.registry import resolve

    config = _load(config_path, None)
    sink = resolve("sink", config.sink.kind).open(config.sink.options, config.model.dimension)
    try:
        outcome = sink.ensure_search_index(config.fields)
    finally:
        sink.close()
    click.echo(f"podembed: {outcome.message}", err=True)
    if outcome.definition is not None:
        click.echo(json.dumps(outcome.definition, indent=2))


# --- MongoDB: load the sample corpus into a collection (issue 3) --------------------------
@cli.command("load-sample")
@click.option(
    "--mongo-uri-env",
    default="PODEMBED_MONGO_URI",
    show_default=True,
    help="Environment variable that holds the MongoDB URI.",
)
@click.option(
    "--mongo-uri",
    default=None,
    help="The URI itself, for a local server (a password here shows in `ps`; "
    "prefer --mongo-uri-env). Never printed.",
)
@click.option("--database", default="podcasts", show_default=True)
@click.option("--collection", default="chunks", show_default=True)
@click.option(
    "--path",
    default="data/sample_chunks.parquet",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Parquet file of chunks to load.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Load only the first N chunks.")
@_guard
def load_sample(
    mongo_uri_env: str, mongo_uri: str | None, database: str, collection: str, path: str, limit: int | None
) -> None:
    """Load the sample corpus into a MongoDB collection (idempotent upsert, _id = chunk_id)."""
    import os

    from pipeline.mongo.sample import load_sample as load

    if mongo_uri:
        os.environ[mongo_uri_env] = mongo_uri
    click.echo(load(database, collection, mongo_uri_env, path, limit).summary())


def _verbosity(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """``-v`` after the command counts with any given before it (``podembed backfill -v``)."""
    if value:
        total = value + (ctx.find_root().params.get("verbose") or 0)
        logging.getLogger().setLevel(logging.WARNING - 10 * min(total, 2))
    return value


for _command in cli.commands.values():
    _command.params.append(
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            callback=_verbosity,
            help="More log output on stderr (-vv: debug); also accepted before the command.",
        )
    )


def main() -> None:
    """Console-script entry point."""
    from pipeline.memory import limit_malloc_arenas

    limit_malloc_arenas()  # first, before any library starts its threads
    cli(prog_name="podembed")


if __name__ == "__main__":
    main()
