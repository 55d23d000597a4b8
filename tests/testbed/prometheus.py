"""Testbed fixtures: an exporter the test controls and a real Prometheus 2.42 scraping it every second.

Both are module-scoped (Prometheus takes a few seconds to start); a test that stops one calls ``start()``
again (same port, same TSDB), and ``ensure_running()`` heals a module fixture a failed test left stopped.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.process import ComponentFailed, Process, free_port, require
from tests.testbed.wait import eventually_sync


class Exporter:
    """``/metrics`` in the text exposition format, with the series the test sets; stop()/start() on one port."""

    def __init__(self) -> None:
        self.port = free_port()
        self._series: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def set(self, name: str, value: float | str, labels: Mapping[str, str] | None = None) -> None:
        """``value`` may be a string for the exposition format's special values ("NaN", "+Inf")."""
        with self._lock:
            self._series[(name, tuple(sorted((labels or {}).items())))] = str(value)

    def remove(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._series.pop((name, tuple(sorted((labels or {}).items()))), None)

    def clear(self) -> None:
        with self._lock:
            self._series.clear()

    def render(self) -> bytes:
        with self._lock:
            lines = []
            for (name, labels), value in sorted(self._series.items()):
                rendered = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{name}{{{rendered}}} {value}" if labels else f"{name} {value}")
        return ("\n".join(lines) + "\n").encode()

    def start(self) -> None:
        if self._server is not None:
            return
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape per second is noise

        # ThreadingHTTPServer sets SO_REUSEADDR: a revived exporter gets its old port back at once.
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Kill the target: scrapes fail (connection refused) from now on."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


class Prometheus:
    """One Prometheus scraping ``targets`` as job ``job`` every second. ``url`` stays the same across restarts.
    ``rule_files`` are evaluated every second and their alerts sent to the ``alertmanagers`` (host:port)."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        *,
        job: str = "dr",
        rule_files: Sequence[Path] = (),
        alertmanagers: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> None:
        self.binary = require("prometheus")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "500ms"},
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        }
        if rule_files:
            config["rule_files"] = [str(path) for path in rule_files]
        if alertmanagers:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
        self.config.write_text(json.dumps(config))  # JSON is YAML: no quoting surprises
        self.args = list(args)  # more flags, e.g. a retention for history older than the default 15 days
        self.process: Process | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive()

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        argv = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            *self.args,
        ]
        self.process = Process("prometheus", argv, self.workdir / "prometheus.log", cwd=self.workdir)
        eventually_sync("prometheus /-/ready", lambda: _get(f"{self.url}/-/ready") == 200, within=timeout, proc=self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def query(self, promql: str) -> list[Any]:
        """The instant query's ``data.result`` (raises while Prometheus is not answering)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(url, timeout=2) as response:
            result: list[Any] = json.load(response)["data"]["result"]
        return result

    def wait_for(self, promql: str, ready: Callable[[list[Any]], bool] = bool, timeout: float = 20.0) -> list[Any]:
        """Poll ``promql`` until ``ready(result)``: the first scrape lands some seconds after start, never sleep."""

        def check() -> tuple[list[Any]] | None:
            result = self.query(promql)
            return (result,) if ready(result) else None  # a 1-tuple: truthy even when the result is empty

        found: tuple[list[Any]] = eventually_sync(f"prometheus query {promql!r}", check, within=timeout, proc=self.process)
        return found[0]


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as response:
        return int(response.status)


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    server = Exporter()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(exporter: Exporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), [exporter.target])
    try:
        server.start()
    except ComponentFailed:
        server.stop()
        raise
    yield server
    server.stop()
