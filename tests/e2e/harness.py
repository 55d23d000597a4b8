"""Runs `hyops-daemon` and the demo primary as real processes and drives them only through `hyopsctl`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent
DAEMON = str(BIN / "hyops-daemon")
CTL = str(BIN / "hyopsctl")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Primary:
    """The demo 'on-prem primary': a real HTTP server process the probe watches."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([DAEMON, "demo-primary", "--port", str(self.port)], stdout=subprocess.DEVNULL)
        wait_for("the demo primary to listen", self._listening, timeout=10)

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


def profile(name: str, *, rules: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """A small profile with the five sandbox modules, per-lane targets derived from the lane name."""
    ip = "203.0.113.10" if name == "prod" else "203.0.113.99"

    def steps(state: str, target: str, primary: str, content: str) -> list[dict[str, Any]]:
        return [
            {
                "id": "capacity",
                "module": "compute/capacity@v1",
                "inputs": {"name": f"{name}-standby", "state": state},
                "hourly_cost_usd": 0.5,
                "timeout": "10s",
                "backoff": "100ms",
            },
            {
                "id": "database",
                "module": "database/primary@v1",
                "inputs": {"cluster": f"{name}-db", "primary": primary},
                "timeout": "10s",
                "backoff": "100ms",
            },
            {
                "id": "floating-ip",
                "module": "network/floating-ip@v1",
                "inputs": {"ip": ip, "target": target},
                "timeout": "10s",
                "backoff": "100ms",
            },
            {
                "id": "dns",
                "module": "dns/record@v1",
                "inputs": {"zone": "dr.example.", "name": f"{name}.dr.example.", "content": content},
                "timeout": "10s",
                "backoff": "100ms",
            },
            {
                "id": "ipam",
                "module": "ipam/address@v1",
                "inputs": {"address": f"{ip}/32", "status": "active", "description": "run ${run.id}"},
                "timeout": "10s",
                "backoff": "100ms",
            },
        ]

    data: dict[str, Any] = {
        "name": name,
        "version": 1,
        "signals": {"primary_http": {"max_age": "3s"}},
        "rules": rules if rules is not None else [],
        "cooldown": "5m",
        "drill": {"allowed": name != "prod", "teardown_after": "10m"},
        "chains": {
            "cutover": steps("running", "edge02", "cloud", "198.51.100.20"),
            "failback": list(reversed(steps("stopped", "edge01", "onprem", "192.0.2.20"))),
        },
    }
    data.update(extra)
    return data


PRIMARY_DOWN = {
    "name": "primary_down",
    "signal": "primary_http",
    "direction": "below",
    "trip": 0.5,
    "for": "1s",
    "consecutive": 2,
}


class DaemonProcess:
    def __init__(
        self,
        root: Path,
        probe_port: int,
        profiles: dict[str, dict[str, Any]],
        latency: dict[str, float],
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.state = root / "state"
        self.socket = self.state / "hyops.sock"
        self.log_path = root / "daemon.log"
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen[bytes] | None = None
        lanes = {}
        for lane, data in profiles.items():
            self.write_profile(lane, data)
            lanes[lane] = {"profile": f"policies/{lane}.yaml", "drivers": {"sandbox": {"latency": f"{latency.get(lane, 0.05)}s"}}}
        config = {
            "node": "edge01",
            "state_dir": "state",
            "tick": "200ms",
            "shutdown_grace": "2s",
            "sources": [
                {
                    "type": "http_probe",
                    "signal": "primary_http",
                    "url": f"http://127.0.0.1:{probe_port}/health",
                    "interval": "200ms",
                    "timeout": "500ms",
                }
            ],
            "lanes": lanes,
        }
        self.config = root / "daemon.yaml"
        self.config.write_text(yaml.safe_dump(config))

    def write_profile(self, lane: str, data: dict[str, Any]) -> None:
        (self.root / "policies").mkdir(parents=True, exist_ok=True)
        (self.root / "policies" / f"{lane}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def world(self, lane: str) -> dict[str, Any]:
        path = self.state / f"world-{lane}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [DAEMON, "run", "--config", str(self.config), "--no-pretty"], stdout=log, stderr=log, env=self.env
        )
        log.close()
        wait_for("the daemon's control socket", lambda: self.ctl("status").returncode == 0 or self._died(), timeout=20)
        assert self.proc.poll() is None, f"daemon exited early:\n{self.log_path.read_text()}"

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CTL, "--socket", str(self.socket), *args], capture_output=True, text=True, timeout=30, env=self.env
        )

    def ctl_json(self, *args: str) -> Any:
        done = self.ctl("--json", *args)
        assert done.returncode == 0, f"hyopsctl {' '.join(args)} failed ({done.returncode}): {done.stderr}"
        return json.loads(done.stdout)

    def lane(self, name: str) -> dict[str, Any]:
        status = self.ctl_json("status")
        return next(lane for lane in status["lanes"] if lane["lane"] == name)

    def wait_status(self, lane: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
        return wait_for(f"lane {lane} to be {status}", lambda: (s := self.lane(lane))["status"] == status and s, timeout)  # type: ignore[no-any-return]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError("the daemon did not stop within 15 s of SIGTERM") from None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")
