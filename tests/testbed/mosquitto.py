"""Testbed fixtures: a real Mosquitto broker on a free loopback port (``mosquitto``, ``mosquitto_factory``).

Run as root, mosquitto drops privileges to user ``mosquitto``, so its folder and config must be world-readable:
the broker lives in a ``tempfile.mkdtemp`` folder opened to 0755 (pytest's tmp_path is 0700). ``start_mosquitto``
is the plain function behind the fixtures, for the benchmarks.

Optionally with users (a password file made by ``mosquitto_passwd``), TLS (a CA and a server certificate for
127.0.0.1 and localhost, made at start: ``broker.ca`` is what clients trust) and an ACL file's text. With an ACL the
testbed adds a user of its own that may read ``$SYS`` (its readiness probe), so the ACL under test need not.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.testbed.pki import Pki
from tests.testbed.process import Process, free_port, require
from tests.testbed.wait import eventually_sync

HOST = "127.0.0.1"
PROBE_USER = "testbed-probe"


class Mosquitto:
    """One broker. ``stop()`` and ``start()`` (same port, same config) let a test take it away and bring it back."""

    def __init__(
        self,
        directory: Path,
        port: int,
        extra_config: str = "",
        users: dict[str, str] | None = None,
        *,
        tls: bool = False,
        acl: str | None = None,
    ) -> None:
        self.host = HOST
        self.port = port
        self.directory = directory
        self.users = dict(users or {})
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        self.ca: Path | None = None
        self._binary = require(shutil.which("mosquitto") or "/usr/sbin/mosquitto")
        self._process: Process | None = None
        self._probe = next(iter(self.users.items()), None)
        lines = [f"listener {port} {HOST}", "persistence false", "log_dest stdout"]
        if tls:
            lines += self._tls()
        if acl is not None:
            if not self.users:
                raise ValueError("an ACL names users: give the broker some")
            self._probe = (PROBE_USER, secrets.token_hex(16))
            self.users[PROBE_USER] = self._probe[1]
            acl_file = directory / "acl"
            acl_file.write_text(f"{acl}\nuser {PROBE_USER}\ntopic read $SYS/#\n")
            acl_file.chmod(0o644)
            lines.append(f"acl_file {acl_file}")
        if self.users:
            lines += self._password_file()
        else:
            lines.append("allow_anonymous true")
        self.config.write_text("\n".join([*lines, extra_config, ""]))
        self.config.chmod(0o644)

    def _tls(self) -> list[str]:
        pki = Pki(self.directory / "pki", "hybridops test broker CA")
        server = pki.server("broker", [HOST, "localhost"])
        (self.directory / "pki").chmod(0o755)
        server.key.chmod(0o644)  # a throwaway key, read by user mosquitto after the privilege drop
        self.ca = pki.ca
        return [f"cafile {pki.ca}", f"certfile {server.cert}", f"keyfile {server.key}", "tls_version tlsv1.2"]

    def _password_file(self) -> list[str]:
        password_file = self.directory / "passwd"
        for i, (user, password) in enumerate(self.users.items()):
            create = ["-c"] if i == 0 else []
            subprocess.run(
                [require("mosquitto_passwd"), "-b", *create, str(password_file), user, password],
                check=True,
                capture_output=True,
                timeout=10,
            )
        password_file.chmod(0o644)  # read by user mosquitto after the privilege drop
        return ["allow_anonymous false", f"password_file {password_file}"]

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart, on the same port) and wait until it answers a subscription to $SYS."""
        if self.alive():
            return
        self._process = Process("mosquitto", [self._binary, "-c", str(self.config)], self.log)
        eventually_sync(f"mosquitto on port {self.port}", self._answers, within=timeout, proc=self._process)

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None

    def _answers(self) -> bool:
        auth: list[str] = []
        if self._probe is not None:
            auth = ["-u", self._probe[0], "-P", self._probe[1]]
        if self.ca is not None:
            auth += ["--cafile", str(self.ca)]
        probe = ["-t", "$SYS/broker/version", "-C", "1", "-W", "3"]
        result = subprocess.run(
            [require("mosquitto_sub"), "-h", self.host, "-p", str(self.port), *auth, *probe], capture_output=True, timeout=5
        )
        return result.returncode == 0 and b"mosquitto" in result.stdout


def start_mosquitto(
    extra_config: str = "", users: dict[str, str] | None = None, *, tls: bool = False, acl: str | None = None
) -> Mosquitto:
    """A running broker in its own world-readable temp folder; ``cleanup(broker)`` stops it and removes the folder."""
    directory = Path(tempfile.mkdtemp(prefix="hyops-mosq-"))
    directory.chmod(0o755)
    try:
        broker = Mosquitto(directory, free_port(), extra_config, users, tls=tls, acl=acl)
        broker.start()
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return broker


def cleanup(broker: Mosquitto) -> None:
    broker.stop()
    shutil.rmtree(broker.directory, ignore_errors=True)


@pytest.fixture
def mosquitto_factory() -> Iterator[Callable[..., Mosquitto]]:
    """``mosquitto_factory(extra_config="", users={"user": "pass"}, tls=False, acl=None)``: more brokers, or one with
    authentication, TLS and an ACL."""
    started: list[Mosquitto] = []

    def make(
        extra_config: str = "", users: dict[str, str] | None = None, *, tls: bool = False, acl: str | None = None
    ) -> Mosquitto:
        broker = start_mosquitto(extra_config, users, tls=tls, acl=acl)
        started.append(broker)
        return broker

    yield make
    for broker in started:
        cleanup(broker)


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A running anonymous broker (about 20 ms to start), stopped at teardown."""
    return mosquitto_factory()
