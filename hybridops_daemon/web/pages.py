"""The journal view's pages: each a GET that reads (the control backend's status and journal answers, the view's
timeline queries) and renders a template. Nothing here writes: not the journal, not the lanes, not a file the
daemon keeps (an export is built in a private temporary folder and sent as a zip).
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from hybridops_daemon.control.backend import DaemonBackend
from hybridops_daemon.control.protocol import NotFound
from hybridops_daemon.journal.export import write_run_folder
from hybridops_daemon.journal.store import Journal
from hybridops_daemon.policy.types import DecisionKind, Trigger
from hybridops_daemon.web.queries import AROUND_S, BadQuery, JournalReader, TimelineFilter, valid_name
from hybridops_daemon.web.views import build_chart, build_run, current_step

VERIFY_FRESH_S = 15.0  # a verify walks the whole chain: pages reuse one this young instead of walking again
VERIFY_TIMEOUT_S = 60.0
EXPORT_TIMEOUT_S = 30.0
RECENT_RUNS = 20
STEP_KINDS = [f"step.{kind}" for kind in ("intent", "check", "approval", "apply", "verify", "done", "failed", "refused")]
REFRESH_S = 2  # how often the live pages re-fetch themselves (static/refresh.js)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hybridops_daemon.web", "templates"),
        autoescape=True,  # every value is text: a signal or step name with HTML in it renders as that HTML's text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ts=_ts, dur=_dur, pretty=_pretty)
    return env


def _ts(value: float | None) -> str:
    return "-" if value is None else datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dur(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


class Pages:
    def __init__(
        self, backend: DaemonBackend, journal: Journal, reader: JournalReader, clock: Callable[[], float] = time.time
    ) -> None:
        self._backend = backend
        self._journal = journal
        self._reader = reader
        self._clock = clock
        self._env = templates()
        self._verified: tuple[float, dict[str, Any]] | None = None
        self._verifying: asyncio.Lock = asyncio.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self.overview),
            web.get("/timeline", self.timeline),
            web.get("/runs/{run_id}", self.run),
            web.get("/runs/{run_id}/export.zip", self.export),
            web.get("/journal", self.journal),
        ]

    def _render(self, template: str, **context: Any) -> web.Response:
        text = self._env.get_template(template).render(now=self._clock(), refresh_s=REFRESH_S, **context)
        return web.Response(text=text, content_type="text/html", charset="utf-8")

    async def overview(self, request: web.Request) -> web.Response:
        status = await self._backend.status()
        steps: dict[str, str | None] = {}
        for lane in status["lanes"]:
            run_id = lane.get("active_run")
            if run_id:  # the newest step record of the active run: one indexed read
                newest = self._journal.records(run_id=run_id, kinds=STEP_KINDS, newest_first=True, limit=1)
                steps[lane["lane"]] = current_step([r.to_dict() for r in newest])
        runs = await self._backend.journal_list(None, RECENT_RUNS)
        return self._render("overview.html", status=status, steps=steps, runs=runs, head=self._journal.head(), live=True)

    async def timeline(self, request: web.Request) -> web.Response:
        try:
            flt = TimelineFilter.parse(request.query)
        except BadQuery as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        page = self._reader.timeline(flt)
        lanes = [lane["lane"] for lane in (await self._backend.status())["lanes"]]
        return self._render(
            "timeline.html",
            flt=flt,
            page=page,
            lanes=lanes,
            kinds=[k.value for k in DecisionKind],
            triggers=[t.value for t in Trigger],
            older=flt.query(before=page.older) if page.older is not None else None,
            newest=flt.query(before=None) if flt.before is not None else None,
            live=flt.before is None,
        )

    async def _records(self, request: web.Request) -> tuple[str, list[dict[str, Any]]]:
        run_id = request.match_info["run_id"]
        if not valid_name(run_id):
            raise web.HTTPNotFound(text="no such run")
        try:
            return run_id, await self._backend.journal_show(run_id)
        except NotFound:
            raise web.HTTPNotFound(text=f"no run {run_id} in the journal") from None

    async def run(self, request: web.Request) -> web.Response:
        run_id, records = await self._records(request)
        view = build_run(records)
        if view is None:
            raise web.HTTPNotFound(text=f"run {run_id} has no run.start record")
        chart = None
        if view.decision_ts is not None:
            around = [r.to_dict() for r in self._reader.decisions_around(view.start.get("lane"), view.decision_ts)]
            chart = build_chart(around, view.decision_ts, view.decision_ts - AROUND_S, view.decision_ts + AROUND_S)
        return self._render("run.html", run=view, chart=chart, live=view.status == "running")

    async def export(self, request: web.Request) -> web.Response:
        run_id, records = await self._records(request)
        async with asyncio.timeout(EXPORT_TIMEOUT_S):
            try:
                body = await asyncio.to_thread(_zip_export, run_id, records)
            except ValueError as exc:  # records that are not a run
                raise web.HTTPNotFound(text=str(exc)) from None
        disposition = f'attachment; filename="{run_id}.zip"'  # run_id passed valid_name: no quote or newline in it
        return web.Response(body=body, content_type="application/zip", headers={"Content-Disposition": disposition})

    async def journal(self, request: web.Request) -> web.Response:
        report = await self._verify()
        return self._render("journal.html", report=report, head=self._journal.head(), live=False)

    async def _verify(self) -> tuple[float, dict[str, Any]]:
        async with self._verifying:  # one walk at a time: a page asked for while one runs waits for its answer
            fresh = self._verified
            if fresh is None or self._clock() - fresh[0] > VERIFY_FRESH_S:
                async with asyncio.timeout(VERIFY_TIMEOUT_S):
                    fresh = self._verified = (self._clock(), await self._backend.journal_verify())
        return fresh


def _zip_export(run_id: str, records: Sequence[Mapping[str, Any]]) -> bytes:
    """The files ``hyopsctl journal export`` writes, written by the same function, zipped under ``<run_id>/``."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="hyops-export-") as tmp, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for path in write_run_folder(records, Path(tmp) / run_id):
            out.write(path, f"{run_id}/{path.name}")
    return buffer.getvalue()
