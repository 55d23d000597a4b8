"""Testbed fixture: a real NetBox 4.7.3 (PyPI, Python 3.12 venv) on its own PostgreSQL 15 and redis-server.

The slow parts are built once and cached outside the repo by ``scripts/netbox-testbed`` (the venv, ~1.5 min, and
a migrated database dumped with ``pg_dump -Fc``, ~4-6 min): the first test session on a fresh machine pays for
them, later sessions restore the dump in about a second. Per session: PostgreSQL (as user postgres, a temporary
cluster on a free loopback port), redis-server, ``pg_restore``, ``netbox runserver --noreload``, a v2 API
token provisioned with the superuser's password from the dump, and the integer custom field ``hyops_fencing_token``
on IP addresses (the netbox driver's fencing stamp; README's one NetBox setup step), created through the API
with that token. Everything is stopped by PID at the end.

This module does not use tests/testbed/postgres.py on purpose: the replica tests own that one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynetbox  # type: ignore[import-untyped]
import pytest

from hybridops_daemon.drivers.netbox import FENCING_FIELD
from tests.testbed.process import ComponentFailed, Process, free_port, require
from tests.testbed.wait import eventually_sync

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "netbox-testbed"
PGBIN = Path("/usr/lib/postgresql/15/bin")
NETBOX_VERSION = "4.7.3"  # as scripts/netbox-testbed installs it
PREPARE_TIMEOUT = 1200.0  # a cold cache: pip install + `netbox migrate` on a busy 2-core machine
START_TIMEOUT = 180.0  # Django imports the whole of NetBox before runserver answers


@dataclass
class NetboxInstance:
    url: str
    token: str  # a v2 token, ``nbt_<key>.<secret>``: pynetbox sends it as ``Authorization: Bearer ...``
    admin: str
    password: str
    timings: dict[str, float] = field(default_factory=dict)

    def api(self, token: str | None = None) -> Any:
        """A pynetbox client for the test itself (tampering, inspecting), with the superuser's token by default."""
        return pynetbox.api(self.url, token=self.token if token is None else token)

    def define_fencing_field(self) -> None:
        """The integer custom field ``hyops_fencing_token`` on IP addresses, as README's NetBox section says; idempotent."""
        define_fencing_field(self.url, self.token)

    def drop_fencing_field(self) -> None:
        """Delete the custom field (and with it every address's stamp): a NetBox that skipped the setup step."""
        for field_id in _fencing_field_ids(self.url, self.token):
            status, body = _http("DELETE", f"{self.url}/api/extras/custom-fields/{field_id}/", token=self.token)
            if status != 204:
                raise ComponentFailed(f"NetBox DELETE custom field {FENCING_FIELD} answered {status}: {str(body)[:500]}")

    def read_only_token(self) -> tuple[int, str]:
        """A second v2 token of the superuser with ``write_enabled`` off: its id (to delete it) and the token."""
        body = {"username": self.admin, "password": self.password, "write_enabled": False, "description": "read-only test"}
        status, answer = _http("POST", f"{self.url}/api/users/tokens/provision/", body)
        if status != 201 or not isinstance(answer, dict) or answer.get("write_enabled") is not False:
            raise ComponentFailed(f"NetBox read-only token provisioning answered {status}: {str(answer)[:500]}")
        return int(answer["id"]), f"nbt_{answer['key']}.{answer['token']}"

    def delete_token(self, token_id: int) -> None:
        status, body = _http("DELETE", f"{self.url}/api/users/tokens/{token_id}/", token=self.token)
        if status != 204:
            raise ComponentFailed(f"NetBox DELETE token {token_id} answered {status}: {str(body)[:500]}")


def _as_postgres(argv: Sequence[str]) -> list[str]:
    # PostgreSQL refuses to run as root.
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)


def _run(what: str, argv: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, check=False
        )
    except subprocess.TimeoutExpired:
        raise ComponentFailed(f"{what} took longer than {timeout}s: {' '.join(argv)}") from None
    if done.returncode != 0:
        raise ComponentFailed(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}{done.stdout[-1000:]}")
    return done.stdout


def _http(method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, method=method, data=None if body is None else json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return int(response.status), json.loads(raw) if raw.strip() else None  # a DELETE answers 204, no body
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _fencing_field_ids(url: str, token: str) -> list[int]:
    status, body = _http("GET", f"{url}/api/extras/custom-fields/?name={FENCING_FIELD}", token=token)
    if status != 200 or not isinstance(body, dict):
        raise ComponentFailed(f"NetBox GET custom fields answered {status}: {str(body)[:500]}")
    return [int(field["id"]) for field in body["results"]]


def define_fencing_field(url: str, token: str) -> None:
    if _fencing_field_ids(url, token):
        return
    field = {
        "name": FENCING_FIELD,
        "label": "HybridOps fencing token",
        "object_types": ["ipam.ipaddress"],
        "type": "integer",
        "description": "The fencing token of the hybridops run that last changed this address",
    }
    status, body = _http("POST", f"{url}/api/extras/custom-fields/", field, token=token)
    if status != 201:
        raise ComponentFailed(f"NetBox POST custom field {FENCING_FIELD} answered {status}: {str(body)[:500]}")


def _redis_pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


class NetboxTestbed:
    """PostgreSQL + redis + NetBox runserver for one test session; ``stop()`` is safe after a partial start."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[Process] = []  # in start order; stopped in reverse
        self.pgdata: Path | None = None
        self._pgtmp: Path | None = None

    def start(self) -> NetboxInstance:
        timings: dict[str, float] = {}
        started = time.monotonic()
        cache = self._prepare()
        timings["prepare_s"] = time.monotonic() - started
        venv, dump = Path(cache["venv"]), Path(cache["dump"])

        mark = time.monotonic()
        db_port = self._start_postgres()
        redis_port = self._start_redis()
        timings["postgres_redis_s"] = time.monotonic() - mark

        mark = time.monotonic()
        pg = ["-h", "127.0.0.1", "-p", str(db_port), "-U", "postgres"]
        _run("createdb", [str(PGBIN / "createdb"), *pg, "netbox"], timeout=60)
        _run("pg_restore", [str(PGBIN / "pg_restore"), *pg, "--no-owner", "-d", "netbox", str(dump)], timeout=120)
        timings["restore_s"] = time.monotonic() - mark

        mark = time.monotonic()
        root = self.workdir / "root"
        _run("netbox-testbed configure", [str(SCRIPT), "configure", str(root), str(db_port), str(redis_port)], timeout=60)
        env = {"NETBOX_ROOT": str(root)}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = Process(
            "netbox runserver",
            [str(venv / "bin" / "netbox"), "runserver", f"127.0.0.1:{port}", "--noreload"],
            self.workdir / "netbox.log",
            env=env,
            cwd=self.workdir,
        )
        self.processes.append(server)
        # LOGIN_REQUIRED is NetBox's default: without a token the API answers 403, which already proves Django is up.
        eventually_sync(
            "NetBox GET /api/status/ to answer",
            lambda: _http("GET", f"{url}/api/status/")[0] in (200, 403),
            START_TIMEOUT,
            0.5,
            server,
        )
        timings["runserver_s"] = time.monotonic() - mark

        mark = time.monotonic()
        admin, password = cache["admin"], cache["password"]
        token = self._provision(url, admin, password, venv, env)
        status, body = _http("GET", f"{url}/api/status/", token=token)
        if status != 200 or not isinstance(body, dict) or body.get("netbox-version") != NETBOX_VERSION:
            raise ComponentFailed(f"NetBox /api/status/ with the new token answered {status}: {str(body)[:500]}")
        define_fencing_field(url, token)
        timings["token_s"] = time.monotonic() - mark
        timings["total_s"] = time.monotonic() - started
        return NetboxInstance(url=url, token=token, admin=admin, password=password, timings=timings)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.name == "postgres" and self.pgdata is not None and process.alive():
                # SIGTERM is PostgreSQL's "smart" shutdown (waits for clients); "fast" ends it at once.
                subprocess.run(
                    _as_postgres([str(PGBIN / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "20", "stop"]),
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
            process.stop()
        self.processes.clear()
        if self._pgtmp is not None:
            shutil.rmtree(self._pgtmp, ignore_errors=True)
            self._pgtmp = None

    # ------------------------------------------------------------------------------------------ internals

    @staticmethod
    def _prepare() -> dict[str, str]:
        """Build (first time) or find the cached venv and dump; the script says how to get Python 3.12 if missing."""
        out = _run("scripts/netbox-testbed (NetBox venv + cached database dump)", [str(SCRIPT)], timeout=PREPARE_TIMEOUT)
        found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        missing = {"venv", "dump", "admin", "password"} - found.keys()
        if missing:
            raise ComponentFailed(f"scripts/netbox-testbed did not report {sorted(missing)}:\n{out}")
        return found

    def _start_postgres(self) -> int:
        postgres = require(str(PGBIN / "postgres"))
        # Not under pytest's tmp_path: its parents are mode 0700 and user postgres could not reach the cluster.
        self._pgtmp = Path(tempfile.mkdtemp(prefix="hybridops-netbox-pg."))
        if os.geteuid() == 0:
            shutil.chown(self._pgtmp, "postgres", "postgres")
        self.pgdata = self._pgtmp / "data"
        _run(
            "initdb",
            _as_postgres(
                [
                    str(PGBIN / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            timeout=120,
        )
        port = free_port()
        argv = [
            postgres,
            "-D",
            str(self.pgdata),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={port}",
            "-c",
            f"unix_socket_directories={self._pgtmp}",
            "-c",
            "fsync=off",  # a throw-away test database: durability costs time and buys nothing
            "-c",
            "full_page_writes=off",
        ]
        process = Process("postgres", _as_postgres(argv), self.workdir / "postgres.log")
        self.processes.append(process)
        isready = str(PGBIN / "pg_isready")
        eventually_sync(
            "PostgreSQL pg_isready",
            lambda: subprocess.run([isready, "-q", "-h", "127.0.0.1", "-p", str(port)], check=False).returncode == 0,
            within=60,
            proc=process,
        )
        return port

    def _start_redis(self) -> int:
        port = free_port()
        argv = [require("redis-server"), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        process = Process("redis-server", [*argv, "--dir", str(self.workdir)], self.workdir / "redis.log")
        self.processes.append(process)
        eventually_sync("redis PING", lambda: _redis_pong(port), within=30, proc=process)
        return port

    def _provision(self, url: str, admin: str, password: str, venv: Path, env: dict[str, str]) -> str:
        """A fresh v2 token for ``admin``; creates the superuser first if the dump lacks it."""
        endpoint = f"{url}/api/users/tokens/provision/"
        status, body = _http("POST", endpoint, {"username": admin, "password": password})
        if status in (400, 401, 403):
            _run(
                "netbox createsuperuser",
                [str(venv / "bin" / "netbox"), "createsuperuser", "--no-input", "--username", admin, "--email", "a@example.org"],
                timeout=120,
                env={**env, "DJANGO_SUPERUSER_PASSWORD": password},
            )
            status, body = _http("POST", endpoint, {"username": admin, "password": password})
        if status != 201 or not isinstance(body, dict) or body.get("version") != 2:
            raise ComponentFailed(f"NetBox token provisioning answered {status}: {str(body)[:500]}")
        return f"nbt_{body['key']}.{body['token']}"


@pytest.fixture(scope="session")
def netbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetboxInstance]:
    bed = NetboxTestbed(tmp_path_factory.mktemp("netbox"))
    try:
        yield bed.start()
    finally:
        bed.stop()
