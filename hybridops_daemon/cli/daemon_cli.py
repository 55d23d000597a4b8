"""``hyops-daemon``: the daemon itself and its offline tools (check-config, schema, journal verify/head, simulate,
history, backtest, demo-primary)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hybridops_daemon.simulate.command import ReplayOptions

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyops-daemon", description="DR decision daemon for a hybrid WAN edge pair")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", type=Path, required=True)
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--pretty", action=argparse.BooleanOptionalAction, default=None, help="force pretty/JSON logs")

    check = commands.add_parser("check-config", help="validate a daemon config and every profile it names")
    check.add_argument("file", type=Path)

    schema = commands.add_parser("schema", help="print the JSON Schema of the daemon config and the profile")
    schema.add_argument("--kind", choices=["all", "daemon_config", "profile"], default="all")

    journal = commands.add_parser("journal", help="offline journal tools (no running daemon needed)")
    journal_commands = journal.add_subparsers(dest="journal_command", required=True)
    verify = journal_commands.add_parser("verify", help="prove the hash chain of a journal file (README: what it proves)")
    verify.add_argument("--db", type=Path, required=True)
    anchor = verify.add_mutually_exclusive_group()
    anchor.add_argument("--expect-head", metavar="SEQ:HASH", help="fail unless record SEQ is still there with HASH")
    anchor.add_argument(
        "--against", type=Path, metavar="OTHER_DB", help="fail unless the head the peer edge last recorded in OTHER_DB is there"
    )
    verify.add_argument("--node", help="with --against: this journal's node (default: what its daemon.start records say)")
    key = verify.add_mutually_exclusive_group()
    key.add_argument("--key-file", type=Path, help="check every signature with the node's journal key in this file")
    key.add_argument("--key-env", metavar="VAR", help="... or in this environment variable")
    head = journal_commands.add_parser("head", help="print the newest record as SEQ:HASH, to anchor it elsewhere")
    head.add_argument("--db", type=Path, required=True)

    demo = commands.add_parser("demo-primary", help="serve a tiny 'on-prem primary' health endpoint for the demo")
    demo.add_argument("--port", type=int, default=8081)
    demo.add_argument("--host", default="127.0.0.1")

    simulate = commands.add_parser(
        "simulate", help="replay a signal trace through decide() and the cost model (see simulations/README.md)"
    )
    simulate.add_argument("--profile", type=Path, required=True, help="the lane's profile (YAML)")
    simulate.add_argument(
        "--trace", type=Path, required=True, action="append", help="JSONL or CSV, optionally .gz; repeat to compare traces"
    )
    simulate.add_argument("--lane", help="the lane simulated (default: the profile's name); commands for others are ignored")
    simulate.add_argument("--json", action="store_true", help="one JSON object (a list with --sweep or several traces)")
    simulate.add_argument("--plot", type=Path, metavar="OUT.png", help="draw signals, levels, decisions and standby periods")
    simulate.add_argument(
        "--sweep", action="append", default=[], metavar="KEY=V1,V2", help="vary a profile key (dotted path); repeatable"
    )
    _replay_options(simulate)
    simulate.add_argument("--every-tick", action="store_true", help="run every tick, none skipped (slower; for verification)")
    simulate.add_argument(
        "--faults", type=Path, metavar="FILE", help="ground truth: a file of 'START END' lines, seconds from the trace start"
    )

    _add_history(commands)
    _add_backtest(commands)

    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args.config, args.log_level, args.pretty)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "schema":
        return _schema(args.kind)
    if args.command == "journal":
        if args.journal_command == "head":
            return _journal_head(args.db)
        if args.node is not None and args.against is None:
            parser.error("--node only goes with --against")
        return _journal_verify(args.db, args.expect_head, args.key_file, args.key_env, args.against, args.node)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "history":
        return _history(args)
    if args.command == "backtest":
        return _backtest(args)
    return _demo_primary(args.host, args.port)


def _add_history(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``history``'s options (apart from main(), which the layout test keeps under 80 lines)."""
    history = commands.add_parser(
        "history", help="export a profile's signals from Prometheus as a trace for simulate (see simulations/README.md)"
    )
    history.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus (or an API like it), http(s)://")
    history.add_argument("--profile", type=Path, required=True, help="the profile whose signals are exported")
    history.add_argument("--start", required=True, metavar="T", help="RFC 3339 with a zone (2026-11-03T00:00Z) or Unix seconds")
    history.add_argument("--end", required=True, metavar="T", help="as --start")
    history.add_argument("--step", default="10s", help="one sample per signal every STEP (default 10s)")
    history.add_argument("-o", "--output", type=Path, metavar="FILE", help="the trace (.jsonl, or .jsonl.gz); default stdout")
    history.add_argument("--incidents", type=Path, metavar="FILE", help="'START END' lines (times as --start): the faults")
    history.add_argument("--queries", type=Path, metavar="FILE", help="YAML: queries: [{signal, query, label}]")
    history.add_argument("--config", type=Path, metavar="FILE", help="queries from the daemon config's prometheus source")
    history.add_argument("--timeout", default="60s", help="per request (default 60s)")
    history.add_argument("--retries", type=int, default=3, help="retries of a request that failed but may pass (default 3)")


def _add_backtest(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``backtest``'s options (apart from main(), which the layout test keeps under 80 lines)."""
    backtest = commands.add_parser(
        "backtest", help="replay every site's trace with every variant of a profile, on local workers or a Dask cluster"
    )
    backtest.add_argument("--profile", type=Path, required=True, help="the lane's profile (YAML)")
    backtest.add_argument(
        "--traces", required=True, action="append", metavar="DIR_OR_GLOB", help="one site per trace file; repeatable"
    )
    backtest.add_argument("--lane", help="the lane simulated (default: the profile's name); commands for others are ignored")
    backtest.add_argument("--json", action="store_true", help="one JSON object: per variant, the fleet's figures and each site's")
    backtest.add_argument("--plot", type=Path, metavar="OUT.png", help="cost against detection latency per variant")
    backtest.add_argument(
        "--sweep", action="append", default=[], metavar="KEY=V1,V2", help="vary a profile key (dotted path); repeatable"
    )
    where = backtest.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    where.add_argument("--scheduler", metavar="tcp://HOST:8786", help="run the sites on this Dask cluster instead")
    backtest.add_argument("--stall-timeout", default="30m", help="give up when no site finishes for this long (default 30m)")
    _replay_options(backtest)


def _replay_options(parser: argparse.ArgumentParser) -> None:
    """The options simulate and backtest share: how the daemon is simulated, and how faults are scored."""
    parser.add_argument("--tick", default="1s", help="the daemon's tick (default 1s)")
    parser.add_argument("--node", default="edge01", help="the simulated edge: samples without 'edge' are its own")
    parser.add_argument("--peer", default="edge02", help="the other edge (for both_edges corroboration)")
    parser.add_argument("--grace", default="60s", help="a cutover this long after a fault's end still counts as its detection")


def _run(path: Path, level: str, pretty: bool | None) -> int:
    from hybridops_daemon.config.loader import check_config
    from hybridops_daemon.daemon.app import Daemon
    from hybridops_daemon.drivers.registry import DRIVER_MODULES
    from hybridops_daemon.lease.base import LeaseLost
    from hybridops_daemon.logs import configure
    from hybridops_daemon.secrets import SecretUnavailable

    config, profiles, errors = check_config(path, DRIVER_MODULES)
    if errors or config is None:
        for error in errors:
            print(error, file=sys.stderr)
        print(f"hyops-daemon: {len(errors)} error(s) in the configuration; not starting", file=sys.stderr)
        return EXIT_INVALID
    daemon = Daemon(config, profiles, path)
    configure(daemon.redactor, level=getattr(logging, level.upper()), pretty=pretty)
    try:
        asyncio.run(daemon.run())
    except (LeaseLost, SecretUnavailable) as exc:  # another daemon holds the state directory; the journal key is missing
        print(f"hyops-daemon: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _check_config(path: Path) -> int:
    from hybridops_daemon.config.loader import check_config, warnings
    from hybridops_daemon.drivers.registry import DRIVER_MODULES

    config, profiles, errors = check_config(path, DRIVER_MODULES)
    for error in errors:
        print(error)
    if errors or config is None:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return EXIT_INVALID
    lanes = ", ".join(f"{lane} ({profiles[lane].ref})" for lane in config.lanes)
    print(f"{path}: OK — node {config.node}, lanes: {lanes}")
    for warning in warnings(config):
        print(f"warning: {path}: {warning}")
    return EXIT_OK


def _schema(kind: str) -> int:
    from hybridops_daemon.config.loader import json_schemas

    schemas = json_schemas()
    print(json.dumps(schemas if kind == "all" else schemas[kind], indent=2, sort_keys=True))
    return EXIT_OK


def _journal_head(db: Path) -> int:
    from hybridops_daemon.journal.store import Journal, JournalError

    try:
        seq, digest = Journal.head_of_file(db)
    except (FileNotFoundError, JournalError) as exc:
        print(f"hyops-daemon: {db}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{seq}:{digest}")
    return EXIT_OK


def _journal_verify(
    db: Path, expect_head: str | None, key_file: Path | None, key_env: str | None, against: Path | None, node: str | None
) -> int:
    from hybridops_daemon.config.base import SecretRef
    from hybridops_daemon.journal.signing import parse_head
    from hybridops_daemon.journal.store import Journal, JournalError
    from hybridops_daemon.secrets import SecretUnavailable, resolve

    if not db.exists():
        print(f"hyops-daemon: no journal at {db}", file=sys.stderr)
        return EXIT_INVALID
    try:
        head = parse_head(expect_head) if expect_head is not None else None
        if against is not None:
            head = _head_seen_by_peer(db, against, node)
        ref = SecretRef(file=key_file, env=key_env) if key_file or key_env else None
        key = resolve("journal key", ref).encode() if ref is not None else None
    except (ValueError, SecretUnavailable) as exc:
        print(f"hyops-daemon: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        report = Journal.verify_file(db, key=key, expect_head=head)
    except JournalError as exc:  # not a journal, or unreadable: no verdict on its content (exit 1 means tampering)
        print(f"hyops-daemon: {db}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not report.ok:
        print(f"journal FAILED verification ({len(report.problems)} problem(s)):")
        for problem in report.problems:
            print(f"  {problem}")
        return EXIT_FAILED
    print(f"journal OK: {report.count} records, head #{report.head_seq} hash {report.head_hash}")
    # What was proven goes to stdout; what was not, to stderr (README: "What `journal verify` proves").
    if report.signatures_checked:
        print(f"signatures checked: records {report.first_signed}..{report.head_seq} signed with the key")
    else:
        print(f"note: signatures not checked (no --key-file/--key-env; {report.signed} record(s) signed)", file=sys.stderr)
    if head is not None:
        print(f"anchored head #{head[0]} is in the chain")
    else:
        print("note: the end is not anchored: records cut from the end pass without --expect-head", file=sys.stderr)
    return EXIT_OK


def _head_seen_by_peer(db: Path, other: Path, node: str | None) -> tuple[int, str]:
    """The head of ``db``'s node that the peer last journaled in ``other`` (printed, as the anchor of this verify).
    Raises ValueError with one line for the operator: without that record there is nothing to check against."""
    from hybridops_daemon.journal.store import PEER_HEAD, JournalError
    from hybridops_daemon.journal.verify import journal_node, peer_anchor

    # Not a journal, or unreadable: no verdict on either file (exit 1 means tampering).
    try:
        node = node or journal_node(db)
    except JournalError as exc:
        raise ValueError(f"{db}: {exc}") from None
    if node is None:
        raise ValueError(f"{db}: no daemon.start record says which node wrote it; name it with --node")
    try:
        seen = peer_anchor(other, node)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    except JournalError as exc:
        raise ValueError(f"{other}: {exc}") from None
    if seen is None:
        raise ValueError(f"{other}: no {PEER_HEAD} record of node {node}: the peer never recorded this journal's head")
    by = seen.recorded_by or "the peer"
    print(f"against {other}: {by} last recorded {node}'s head as #{seen.seq} hash {seen.hash} (its record #{seen.record})")
    return seen.seq, seen.hash


def _replay(args: argparse.Namespace) -> ReplayOptions:
    from hybridops_daemon.simulate.command import ReplayOptions

    return ReplayOptions(
        profile_path=args.profile,
        sweeps=args.sweep,
        lane=args.lane,
        tick=args.tick,
        node=args.node,
        peer=args.peer,
        grace=args.grace,
        as_json=args.json,
        plot_path=args.plot,
    )


def _simulate(args: argparse.Namespace) -> int:
    from hybridops_daemon.simulate.command import run_simulate

    return run_simulate(_replay(args), trace_paths=args.trace, every_tick=args.every_tick, faults_path=args.faults)


def _backtest(args: argparse.Namespace) -> int:
    from hybridops_daemon.simulate.command import run_backtest

    return run_backtest(
        _replay(args),
        trace_patterns=args.traces,
        workers=args.workers,
        scheduler=args.scheduler,
        stall_timeout=args.stall_timeout,
    )


def _history(args: argparse.Namespace) -> int:
    from hybridops_daemon.simulate.history import run_history

    return run_history(
        prometheus=args.prometheus,
        profile_path=args.profile,
        start=args.start,
        end=args.end,
        step=args.step,
        output=args.output,
        incidents_path=args.incidents,
        queries_path=args.queries,
        config_path=args.config,
        timeout=args.timeout,
        retries=args.retries,
    )


# Each SIGUSR1 makes the demo primary's application this much slower (`make slow-primary`); SIGUSR2 makes it fast again.
DEMO_SLOWDOWN_STEP = 0.5


def _demo_primary(host: str, port: int) -> int:
    import signal

    from aiohttp import web

    slowdown = [0.0]  # seconds /app waits before it answers: the load the demo's burst lane watches

    def slower() -> None:
        slowdown[0] += DEMO_SLOWDOWN_STEP
        print(f"demo primary: /app answers in about {slowdown[0]:g}s", flush=True)

    def faster() -> None:
        slowdown[0] = 0.0
        print("demo primary: /app answers at once", flush=True)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "role": "primary"})

    async def application(_: web.Request) -> web.Response:
        await asyncio.sleep(slowdown[0])
        return web.json_response({"status": "ok", "slowdown_s": slowdown[0]})

    async def on_startup(_: web.Application) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, slower)
        loop.add_signal_handler(signal.SIGUSR2, faster)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/app", application)
    app.on_startup.append(on_startup)
    print(f"demo primary: http://{host}:{port}/health (stop it to watch the cutover)", flush=True)
    print(f"demo primary: http://{host}:{port}/app (make slow-primary: +{DEMO_SLOWDOWN_STEP:g}s; make fast-primary)", flush=True)
    web.run_app(app, host=host, port=port, print=None, handle_signals=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
