"""``hyopsctl``: the operator's command line for a running daemon. It talks to the control socket and nothing else.

Exit codes: 0 ok; 1 refused or not found by the daemon (or a policy refusal, a broken journal); 2 usage error or bad
request; 3 the daemon is not running or did not answer; 141 stdout was closed (``hyopsctl journal list | head -1``),
as a tool killed by SIGPIPE; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hybridops_daemon.control.client import (
    ControlClientError,
    DaemonRefused,
    DaemonUnavailable,
    ProtocolError,
    request_sync,
)
from hybridops_daemon.durations import format_duration

DEFAULT_SOCKET = Path("/run/hybridops/hyops.sock")
DEFAULT_TIMEOUT_S = 10.0
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_PIPE = 128 + signal.SIGINT, 128 + signal.SIGPIPE
_REASON_CHARS = 60

Handler = Callable[[argparse.Namespace], int]


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        ns = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and usage errors; main() returns codes instead
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = ns.handler
    try:
        code = handler(ns)
        sys.stdout.flush()  # here, not at exit: a reader that went away is then ours to handle
        return code
    except BrokenPipeError:
        # Whoever read stdout has gone; the rest of the output is not wanted. Point stdout at /dev/null so the
        # interpreter's own flush at exit does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except DaemonUnavailable as exc:
        _error(str(exc))
        return EXIT_UNAVAILABLE
    except DaemonRefused as exc:
        label = exc.code.replace("_", " ")
        # "resume refused: lane is PRIMARY, not paused" says it already; "refused: resume refused: ..." twice
        _error(exc.message if exc.message.split(":", 1)[0].endswith(label) else f"{label}: {exc.message}")
        return EXIT_USAGE if exc.code == "bad_request" else EXIT_REFUSED
    except ControlClientError as exc:
        _error(str(exc))
        return EXIT_REFUSED


# --------------------------------------------------------------------------------------------- arguments


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _globals(*, defaults: bool) -> argparse.ArgumentParser:
    """The global options. Subcommands take them too (``hyopsctl status --json``) with SUPPRESS defaults, so a
    subcommand that does not repeat an option leaves the value given before it alone."""
    parent = argparse.ArgumentParser(add_help=False)

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    env_socket = os.environ.get("HYOPS_SOCKET")
    parent.add_argument(
        "--socket",
        type=Path,
        metavar="PATH",
        default=default(Path(env_socket) if env_socket else DEFAULT_SOCKET),
        help=f"control socket (default: $HYOPS_SOCKET, else {DEFAULT_SOCKET})",
    )
    parent.add_argument("--json", action="store_true", default=default(False), help="print the raw result as JSON")
    parent.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        default=default(DEFAULT_TIMEOUT_S),
        help=f"how long to wait for the daemon (default: {DEFAULT_TIMEOUT_S:g})",
    )
    return parent


def _parser() -> argparse.ArgumentParser:
    common = _globals(defaults=False)
    parser = argparse.ArgumentParser(
        prog="hyopsctl", description="Control a running hybridops daemon.", parents=[_globals(defaults=True)]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Handler, help_text: str, on: argparse._SubParsersAction[argparse.ArgumentParser] = sub
    ) -> argparse.ArgumentParser:
        cmd = on.add_parser(name, help=help_text, description=help_text, parents=[common])
        cmd.set_defaults(handler=handler)
        return cmd

    command("status", _status, "show lanes, their state and pending approvals")
    command("drill", _submitter("drill"), "run a DR drill on a lane").add_argument("--lane", required=True)
    cutover = command("cutover", _cutover, "cut a lane over to the standby side now")
    cutover.add_argument("--lane", required=True)
    cutover.add_argument("--confirm", action="store_true", help="required: this moves production traffic")
    command("failback", _submitter("failback"), "fail a lane back to the primary side").add_argument("--lane", required=True)
    command("pause", _submitter("pause"), "stop automatic decisions (one lane, or all)").add_argument("--lane")
    command("resume", _submitter("resume"), "resume automatic decisions (one lane, or all)").add_argument("--lane")
    command("ready", _ready, "run the lanes' preflights now: is the cutover path ready?").add_argument("--lane")
    teardown = command("teardown", _submitter("teardown"), "stop the capacity a failed run left running (failback chain)")
    teardown.add_argument("--lane", required=True)
    for name in ("approve", "reject"):
        step = command(name, _approval(name), f"{name} a step waiting for approval")
        step.add_argument("run", metavar="RUN")
        step.add_argument("step", metavar="STEP")

    run = sub.add_parser("run", help="act on a run in the journal", description="Act on a run in the journal.")
    run_sub = run.add_subparsers(dest="run_command", required=True, metavar="SUBCOMMAND")
    abandon = command("abandon", _abandon, "end an orphaned run (root or the daemon's user only)", on=run_sub)
    abandon.add_argument("run", metavar="RUN")
    abandon.add_argument("--reason", required=True, help="why, for the journal")

    journal = sub.add_parser("journal", help="query the journal", description="Query the journal.")
    journal_sub = journal.add_subparsers(dest="journal_command", required=True, metavar="SUBCOMMAND")
    listing = command("list", _journal_list, "list recent runs", on=journal_sub)
    listing.add_argument("--lane")
    listing.add_argument("--limit", type=int, default=20, help="newest N runs, 1..1000 (default: 20)")
    command("show", _journal_show, "show every record of a run", on=journal_sub).add_argument("run", metavar="RUN")
    command("verify", _journal_verify, "check the journal's hash chain", on=journal_sub)
    export = command("export", _journal_export, "write a run as a folder of JSON files", on=journal_sub)
    export.add_argument("run", metavar="RUN")
    export.add_argument("--dir", type=Path, required=True, metavar="DIR")
    return parser


# --------------------------------------------------------------------------------------------- commands


def _request(ns: argparse.Namespace, cmd: str, args: Mapping[str, Any]) -> Any:
    return request_sync(ns.socket, cmd, args, timeout=ns.timeout)


def _emit(ns: argparse.Namespace, result: Any, render: Callable[[Any], str]) -> None:
    if ns.json:
        print(json.dumps(result, indent=2))
        return
    try:
        text = render(result)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # a daemon of another version may answer in another shape; --json still shows what it said
        raise ProtocolError(f"unexpected answer from the daemon ({type(exc).__name__}: {exc}); try --json") from None
    print(text)


def _status(ns: argparse.Namespace) -> int:
    _emit(ns, _request(ns, "status", {}), lambda result: render_status(result, time.time()))
    return EXIT_OK


def _submit(ns: argparse.Namespace, cmd: str, args: Mapping[str, Any]) -> int:
    result = _request(ns, cmd, args)
    _emit(ns, result, lambda r: render_submit(cmd, r))
    if not isinstance(result, dict):
        return EXIT_OK
    decisions = result.get("decisions") or [result.get("decision")]
    # the intent was recorded but the policy refused it (cooldown, guardrail...): a script must see that. For every
    # lane at once (pause/resume), only when no lane took it: "resume" leaves a lane that was not paused alone
    refused = all(isinstance(decision, dict) and decision.get("kind") == "refuse" for decision in decisions)
    return EXIT_REFUSED if refused else EXIT_OK


def _submitter(cmd: str) -> Handler:
    return lambda ns: _submit(ns, cmd, {"lane": ns.lane})


def _cutover(ns: argparse.Namespace) -> int:
    if not ns.confirm:
        # checked before connecting: a missing flag never reaches the daemon (which would refuse it as well)
        _error(f"cutover moves production traffic of lane {ns.lane}; re-run with --confirm")
        return EXIT_USAGE
    return _submit(ns, "cutover", {"lane": ns.lane, "confirm": True})


def _approval(cmd: str) -> Handler:
    def handler(ns: argparse.Namespace) -> int:
        result = _request(ns, cmd, {"run_id": ns.run, "step": ns.step})
        _emit(ns, result, render_approval)
        return EXIT_OK

    return handler


def _ready(ns: argparse.Namespace) -> int:
    result = _request(ns, "ready", {"lane": ns.lane})
    _emit(ns, result, lambda lanes: render_ready(lanes, time.time()))
    broken = [s for lane in result for s in lane["steps"] if s.get("state") == "not ready"] if isinstance(result, list) else []
    return EXIT_REFUSED if broken else EXIT_OK  # a script (or a cron job) sees a broken path


def _abandon(ns: argparse.Namespace) -> int:
    result = _request(ns, "run_abandon", {"run_id": ns.run, "reason": ns.reason})
    _emit(ns, result, lambda r: f"run {r['run_id']} (lane {r.get('lane') or '-'}) ended as abandoned: record #{r['seq']}")
    return EXIT_OK


def _journal_list(ns: argparse.Namespace) -> int:
    result = _request(ns, "journal_list", {"lane": ns.lane, "limit": ns.limit})
    _emit(ns, result, render_runs)
    return EXIT_OK


def _journal_show(ns: argparse.Namespace) -> int:
    width = shutil.get_terminal_size((100, 24)).columns
    _emit(ns, _request(ns, "journal_show", {"run_id": ns.run}), lambda r: render_records(r, width))
    return EXIT_OK


def _journal_verify(ns: argparse.Namespace) -> int:
    result = _request(ns, "journal_verify", {})
    _emit(ns, result, render_verify)
    return EXIT_OK if isinstance(result, dict) and result.get("ok") is True else EXIT_REFUSED


def _journal_export(ns: argparse.Namespace) -> int:
    records = _request(ns, "journal_run_records", {"run_id": ns.run})
    # imported here, not at the top: hyopsctl needs only the control client; export alone needs the folder layout
    from hybridops_daemon.journal.export import write_run_folder

    try:
        paths = write_run_folder(records, ns.dir)
    except (OSError, ValueError) as exc:  # not writable, a non-empty folder, records that are not a run
        _error(f"cannot export run {ns.run}: {exc}")
        return EXIT_REFUSED
    files = [str(path) for path in paths]
    _emit(ns, files, lambda _: f"exported run {ns.run} ({len(records)} records) to {ns.dir}:\n" + "\n".join(files))
    return EXIT_OK


# --------------------------------------------------------------------------------------------- rendering


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    cells = [list(headers), *([_cell(value) for value in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def _cell(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _clip(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(limit - 1, 0)] + "…"


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ago(ts: float | None, now: float) -> str:
    return "-" if ts is None else f"{format_duration(max(now - ts, 0.0))} ago"


def _notify_line(notify: Mapping[str, Any]) -> str:
    """Direct notification: whether Alertmanager takes the daemon's alerts, and what waits or was lost."""
    reach = {True: "reachable", False: "NOT reachable", None: "not contacted yet"}[notify.get("reachable")]
    line = f"alertmanager: {reach}, {notify.get('active', 0)} alert(s) active, {notify.get('queued', 0)} queued"
    lost = [f"{notify[key]} {key}" for key in ("dropped", "rejected") if notify.get(key)]
    return line + (f" ({', '.join(lost)})" if lost else "")


def render_status(result: Mapping[str, Any], now: float) -> str:
    lines = [f"node {result['node']}" + (f" (lease: {result['lease']})" if result.get("lease") else "")]
    if result.get("web"):
        lines.append(f"journal view: {result['web']}")
    if result.get("notify"):
        lines.append(_notify_line(result["notify"]))
    check = result.get("journal_check")
    if check:
        verdict = "verified" if check.get("ok") else f"verification FAILING: {check.get('problem')}"
        lines.append(f"journal: {verdict} ({_ago(check.get('at'), now)}, every {format_duration(check.get('every', 0))})")
    rows = []
    idle: list[str] = []  # lanes this node does not act on, and why (no quorum, another node leads)
    stranded: list[str] = []  # lanes with capacity a failed run may have left running, and when it goes
    bursts: list[str] = []  # burst lanes: size, spend this month, budget left
    for lane in result["lanes"]:
        status = lane["status"] if not lane.get("paused_by") else f"{lane['status']} (by {lane['paused_by']})"
        if lane.get("capacity"):
            stranded.append(_stranded(lane["lane"], lane["capacity"], now))
        if lane.get("burst"):
            bursts.append(_burst_line(lane["lane"], lane["burst"]))
        for fault in (lane.get("readiness") or {}).get("not_ready", []):
            stranded.append(f"{lane['lane']}: {lane['readiness']['chain']} step {fault['step']} not ready: {fault['reason']}")
        last = lane.get("last_decision")
        decision = f"{last['kind']} {_ago(last['at'], now)}: {_clip(last['reason'], _REASON_CHARS)}" if last else None
        leader = lane.get("leadership") or {}
        situation = leader.get("situation", "-")
        if leader.get("leading"):
            situation = f"leading (token {leader.get('fencing_token')})"
        elif leader.get("reason"):
            idle.append(f"{lane['lane']}: {situation}, not acting here: {leader['reason']}")
        since = _ago(lane.get("since"), now)
        ready = (lane.get("readiness") or {}).get("summary")
        rows.append([lane["lane"], status, situation, since, lane.get("profile"), lane.get("active_run"), ready, decision])
    if rows:
        headers = ["LANE", "STATUS", "LEADERSHIP", "SINCE", "PROFILE", "RUN", "READINESS", "LAST DECISION"]
        lines.append(format_table(headers, rows))
    else:
        lines.append("no lanes configured")
    lines += bursts + idle + stranded + _peer_links(result.get("sources") or [])
    retention = result.get("retention")
    if retention:
        lines.append(f"journal retention held {_ago(retention.get('since'), now)}: {retention['held']}")
    approvals = result.get("pending_approvals") or []
    if approvals:
        lines += ["", "pending approvals:"]
        rows = []
        for item in approvals:
            expires_at = item.get("expires_at")
            if expires_at is None:
                expires = "never"
            elif expires_at <= now:
                expires = "expired"
            else:
                expires = f"in {format_duration(expires_at - now)}"
            rows.append([item["run_id"], item["step"], item.get("lane"), _ago(item.get("since"), now), expires])
        lines.append(format_table(["RUN", "STEP", "LANE", "WAITING", "EXPIRES"], rows))
    return "\n".join(lines)


def _peer_links(sources: Sequence[Mapping[str, Any]]) -> list[str]:
    """A line per peer link that trusts the broker alone, or has dropped messages (and why)."""
    lines = []
    for source in sources:
        if "dropped" not in source:
            continue
        if source.get("authenticated") is False:
            lines.append(f"{source['source']}: peer messages not authenticated (no auth key): the broker alone vouches for them")
        counts = ", ".join(f"{reason} {count}" for reason, count in source["dropped"].items() if count)
        if counts:
            lines.append(f"{source['source']}: peer messages dropped: {counts}")
    return lines


def _burst_line(lane: str, burst: Mapping[str, Any]) -> str:
    """``burst: size 2 of 4 (scaling 0 → 2), $0.32/h; spent $1.20 this month (2026-12), $148.80 of $150.00 left``"""
    size = f"size {burst['size']} of {burst['max_size']}"
    if burst.get("scaling_from") is not None:
        size += f" (scaling {burst['scaling_from']} → {burst['size']})"
    spent = f"spent ${burst['spent_usd']:.2f} this month ({burst['month']})"
    left = burst.get("budget_left_usd")
    budget = "no monthly budget" if left is None else f"${left:.2f} of ${burst['monthly_budget_usd']:.2f} left"
    return f"{lane}: burst {size}, ${burst['hourly_usd']:.2f}/h; {spent}, {budget}"


def _stranded(lane: str, capacity: Mapping[str, Any], now: float) -> str:
    at = capacity.get("next_teardown")
    when = "-" if at is None else ("due" if at <= now else f"in {format_duration(at - now)}")
    if capacity.get("waits_for_healthy_primary"):
        when += " (once the primary is healthy)"
    return (
        f"{lane}: FAILED, capacity may be running: {', '.join(capacity['may_be_running'])} (left by run "
        f"{capacity['left_by']}); teardown {when}, failed teardowns: {capacity['failed_teardowns']}"
        f"; hyopsctl teardown --lane {lane}"
    )


def render_ready(lanes: Sequence[Mapping[str, Any]], now: float) -> str:
    rows, notes = [], []
    for lane in lanes:
        if lane.get("skipped"):
            notes.append(f"{lane['lane']}: not checked now: {lane['skipped']} (the last results follow)")
        for step in lane["steps"]:
            took = f"{step['duration_s']:.2f}s"
            reason = _clip(step["reason"], 90)
            rows.append([lane["lane"], step["chain"], step["step"], step["state"], _ago(step["checked_at"], now), took, reason])
    table = format_table(["LANE", "CHAIN", "STEP", "STATE", "CHECKED", "TOOK", "REASON"], rows) if rows else "no steps checked"
    return "\n".join([*notes, table])


def render_submit(cmd: str, result: Mapping[str, Any]) -> str:
    intent = result["intent_id"]
    decision = result.get("decision")
    if decision is None:
        return f"{cmd} recorded as intent #{intent}; the daemon loop will act on it"
    lanes = result.get("decisions") or []
    if len(lanes) > 1:  # pause/resume of every lane: "decision" is only the last lane's
        return "\n".join(f"{cmd} {_verdict(each)} on lane {each['lane']}: {_reason(cmd, each)}" for each in lanes)
    # The reason already names the run and what was decided.
    return f"{cmd} {_verdict(decision)} (intent #{intent}): {_reason(cmd, decision)}"


def _verdict(decision: Mapping[str, Any]) -> str:
    return "refused" if decision["kind"] == "refuse" else "accepted"


def _reason(cmd: str, decision: Mapping[str, Any]) -> str:
    # the policy's refusals begin "<cmd> refused: ", which the line has just said
    return str(decision["reason"]).removeprefix(f"{cmd} refused: ")


def render_approval(result: Mapping[str, Any]) -> str:
    verdict = "approved" if result["approved"] else "rejected"
    return f"{verdict} step {result['step']} of run {result['run_id']} (lane {result.get('lane') or '-'})"


def render_runs(runs: Sequence[Mapping[str, Any]]) -> str:
    if not runs:
        return "no runs"
    rows = []
    for run in runs:
        kind, chain = run.get("kind"), run.get("chain")
        ended = run.get("ended_at")
        took = "running" if ended is None else format_duration(max(ended - run["started_at"], 0.0))
        rows.append(
            [
                run["run_id"],
                run.get("lane"),
                kind if chain in (None, kind) else f"{kind}/{chain}",
                run.get("trigger"),
                run.get("actor"),
                _utc(run["started_at"]),
                took,
                run.get("status"),
                _clip((run.get("outcome") if run.get("status") == "failed" else run.get("reason")) or "", _REASON_CHARS),
            ]
        )
    return format_table(["RUN", "LANE", "KIND", "TRIGGER", "ACTOR", "STARTED", "TOOK", "STATUS", "REASON"], rows)


def _summary(body: Mapping[str, Any]) -> str:
    reason = body.get("reason")
    if isinstance(reason, str):
        return reason
    fields = [f"{key}={body[key]}" for key in ("step", "attempt", "satisfied", "status", "outcome", "ok", "error") if key in body]
    return " ".join(fields) if fields else json.dumps(body, separators=(",", ":"), sort_keys=True)


def render_records(records: Sequence[Mapping[str, Any]], width: int) -> str:
    if not records:
        return "no records"
    lines = []
    for record in records:
        head = f"{record['seq']:>6}  {_utc(record['ts'])}  {record['kind']:<16}  "
        body = record.get("body")
        summary = _summary(body) if isinstance(body, Mapping) else ""
        lines.append((head + _clip(summary, max(width - len(head), 20))).rstrip())
    return "\n".join(lines)


def render_verify(result: Mapping[str, Any]) -> str:
    if result["ok"]:
        return f"journal OK: {result['count']} records, head #{result['head_seq']} hash {result['head_hash']}"
    problems = result.get("problems") or []
    return "\n".join([f"journal BROKEN: {len(problems)} problem(s) in {result['count']} records", *map(str, problems)])


def _error(message: str) -> None:
    print(f"hyopsctl: {message}", file=sys.stderr)
