"""Testbed fixtures: a real Alertmanager (0.25) that sends real webhooks to a receiver URL the test gives.

``alertmanager_factory(webhook_url, token=...)`` starts one (after the receiver is listening, since its URL goes
into the config); every alert is its own group (``group_by: ['...']``) so each fire/resolve is delivered
on its own: firing at once (``group_wait: 0s``), resolved within ``group_interval`` (1 s).
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.testbed.process import ComponentFailed, Process, free_port, require
from tests.testbed.wait import eventually_sync


class Alertmanager:
    def __init__(
        self, workdir: Path, webhook_url: str, token: str | None, resolve_timeout: str, port: int | None = None
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        webhook: dict[str, Any] = {"url": webhook_url, "send_resolved": True}
        if token is not None:
            webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials": token}}
        config = {
            "global": {"resolve_timeout": resolve_timeout},
            "route": {
                "receiver": "hook",
                "group_by": ["..."],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1m",
            },
            "receivers": [{"name": "hook", "webhook_configs": [webhook]}],
        }
        config_file = workdir / "alertmanager.yml"
        config_file.write_text(json.dumps(config))  # JSON is YAML
        argv = [
            require("prometheus-alertmanager"),
            f"--config.file={config_file}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no HA gossip: nothing but loopback, and no peer to wait for
        ]
        self.process = Process("alertmanager", argv, workdir / "alertmanager.log", cwd=workdir)
        try:
            eventually_sync("alertmanager /-/ready", self._ready, within=20, proc=self.process)
        except ComponentFailed:
            self.process.stop()  # a hung, never-ready one must not outlive the test
            raise

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            return bool(response.status == 200)

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts", data=json.dumps(alerts).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # raises on a non-2xx answer
            response.read()

    def fire(self, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None, ends_in: float | None = None) -> None:
        """Without ``ends_in`` the alert fires until resolved (or until ``resolve_timeout`` without a re-post)."""
        alert: dict[str, Any] = {"labels": dict(labels), "annotations": dict(annotations or {})}
        if ends_in is not None:
            alert["endsAt"] = _iso(datetime.now(UTC) + timedelta(seconds=ends_in))
        self.post_alerts([alert])

    def resolve(self, labels: Mapping[str, str]) -> None:
        """The same labels with ``endsAt`` in the past: Alertmanager marks the alert resolved and tells the hook."""
        self.post_alerts([{"labels": dict(labels), "endsAt": _iso(datetime.now(UTC) - timedelta(seconds=60))}])

    def stop(self) -> None:
        self.process.stop()


class WebhookReceiver:
    """The webhook Alertmanager delivers to: every alert of every notification, in arrival order."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.port = 0

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.alerts.extend(body["alerts"])
        return web.Response()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.port = int(runner.addresses[0][1])
            yield f"http://127.0.0.1:{self.port}/hook"
        finally:
            await runner.cleanup()

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a["labels"]["alertname"] == name and a["status"] == "firing"]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Callable[..., Alertmanager]]:
    started: list[Alertmanager] = []

    def start(
        webhook_url: str, *, token: str | None = None, resolve_timeout: str = "1m", port: int | None = None
    ) -> Alertmanager:
        """``port``: a given one (a test that starts it after its clients), else a free one."""
        workdir = tmp_path / f"alertmanager-{len(started)}"
        workdir.mkdir()
        manager = Alertmanager(workdir, webhook_url, token, resolve_timeout, port)
        started.append(manager)
        return manager

    yield start
    for manager in started:
        manager.stop()
