"""Testbed fixture: a real PowerDNS Authoritative 4.7 (gsqlite3 backend) on free loopback ports (``powerdns``).

Set up as TESTBED.md says: a temp folder with a fresh sqlite database loaded from the Debian schema, a
``pdns.conf`` with the API on and ``dnsupdate=yes`` for 127.0.0.1, ``pdns_server --config-dir=DIR`` in the
foreground, ready once ``GET /api/v1/servers/localhost`` answers 200. Our config sets no ``setuid``/``setgid``,
so the server keeps running as root and the folder needs no special permissions (it is opened to 0755 anyway,
in case someone adds them).

The zone ``dr.example.`` is created through the API (Native, an SOA and two NS records). RFC 2136 updates to
it need the sender's address to be allowed (``ALLOW-DNSUPDATE-FROM`` metadata, on top of the global setting)
AND a TSIG signature with key ``TSIG_NAME`` (``TSIG-ALLOW-DNSUPDATE``), created through the ``tsigkeys`` API.
``start_powerdns`` is the plain function behind the fixture, for benchmarks.

``PowerDns(directory, host=...)`` binds DNS and the API to another address (one a network namespace can reach)
and allows API calls and updates from ``allow_from``: by default the loopback addresses for a loopback host, every
address for an unspecified one (``0.0.0.0``, ``::``), else the host's /24 (IPv4) or /64 (IPv6) plus loopback.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.process import ComponentFailed, Process, free_port, require
from tests.testbed.wait import eventually_sync

HOST = "127.0.0.1"
ZONE = "dr.example."
TSIG_NAME = "hyops-update."
TSIG_ALGORITHM = "hmac-sha256"
SCHEMA = Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")


def _default_allow_from(host: str) -> tuple[str, ...]:
    address = ipaddress.ip_address(host)
    if address.is_loopback:  # only loopback clients reach a loopback listener: all of them, whichever source they use
        return ("127.0.0.0/8", "::1/128")
    if address.is_unspecified:
        return ("0.0.0.0/0", "::/0")
    network = ipaddress.ip_network(f"{address}/{24 if address.version == 4 else 64}", strict=False)
    return (str(network), "127.0.0.1/32", "::1/128")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class PowerDns:
    """One authoritative server. ``stop()``/``start()`` keep the ports, the key and the database (zone and records)."""

    def __init__(self, directory: Path, host: str = HOST, allow_from: Sequence[str] | None = None) -> None:
        self.directory = directory
        self.host = str(ipaddress.ip_address(host))
        self.allow_from = tuple(allow_from) if allow_from is not None else _default_allow_from(self.host)
        self.dns_port = free_port()
        self.api_port = free_port()
        self.api_key = secrets.token_hex(16)
        self.zone = ZONE
        self.tsig_name = TSIG_NAME
        self.tsig_algorithm = TSIG_ALGORITHM
        self.tsig_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.log = directory / "pdns.log"
        self._binary = require("pdns_server")
        self._process: Process | None = None
        database = directory / "pdns.sqlite3"
        if not SCHEMA.exists():
            raise ComponentFailed(f"{SCHEMA} is missing: run scripts/testbed-install (pdns-backend-sqlite3)")
        subprocess.run([require("sqlite3"), str(database)], stdin=SCHEMA.open("rb"), check=True, capture_output=True, timeout=30)
        (directory / "pdns.conf").write_text(
            "\n".join(
                [
                    "launch=gsqlite3",
                    f"gsqlite3-database={database}",
                    f"local-address={self.host}",
                    f"local-port={self.dns_port}",
                    f"socket-dir={directory}",
                    "daemon=no",
                    "guardian=no",
                    "disable-syslog=yes",
                    "security-poll-suffix=",
                    "default-soa-content=ns1.@ hostmaster.@ 0 10800 3600 604800 30",
                    "api=yes",
                    f"api-key={self.api_key}",
                    "webserver=yes",
                    f"webserver-address={self.host}",
                    f"webserver-port={self.api_port}",
                    f"webserver-allow-from={','.join(self.allow_from)}",
                    "dnsupdate=yes",
                    f"allow-dnsupdate-from={','.join(self.allow_from)}",
                    "",
                ]
            )
        )

    @property
    def api_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.api_port}"

    @property
    def nameserver(self) -> str:
        """The DNS listener as a driver's ``nameservers`` entry."""
        return f"{_url_host(self.host)}:{self.dns_port}"

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def start(self, timeout: float = 20.0) -> None:
        if self.alive():
            return
        self._process = Process("pdns_server", [self._binary, f"--config-dir={self.directory}"], self.log)
        eventually_sync(
            f"PowerDNS API on port {self.api_port}",
            lambda: self.api("GET", "/api/v1/servers/localhost")[0] == 200,
            within=timeout,
            proc=self._process,
        )

    def stop(self) -> None:
        """SIGTERM and wait: PowerDNS takes about 2 s to exit."""
        if self._process is not None:
            self._process.stop(timeout=15)
            self._process = None

    # ------------------------------------------------------------------------------------ API helpers (blocking)

    def api(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        """(status, decoded JSON body or None). Never raises for an HTTP error status."""
        request = urllib.request.Request(
            self.api_url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-API-Key": self.api_key if key is None else key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw.strip() else None
        except ValueError:  # some errors (404 on an unknown path) come as plain text
            return status, raw.decode(errors="replace")

    def _ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.api(method, path, body)
        if status >= 300:
            raise ComponentFailed(f"PowerDNS API {method} {path} answered {status}: {answer}")
        return answer

    def create_zone(self, zone: str) -> None:
        self._ok(
            "POST",
            "/api/v1/servers/localhost/zones",
            {"name": zone, "kind": "Native", "nameservers": [f"ns1.{zone}", f"ns2.{zone}"]},
        )

    def allow_updates(self, zone: str) -> None:
        """RFC 2136 to ``zone``: from ``allow_from``, signed with the fixture's TSIG key (created once)."""
        status, _ = self.api("GET", f"/api/v1/servers/localhost/tsigkeys/{self.tsig_name}")
        if status == 404:
            self._ok(
                "POST",
                "/api/v1/servers/localhost/tsigkeys",
                {"name": self.tsig_name, "algorithm": self.tsig_algorithm, "key": self.tsig_secret},
            )
        base = f"/api/v1/servers/localhost/zones/{zone}/metadata"
        self._ok("PUT", f"{base}/ALLOW-DNSUPDATE-FROM", {"metadata": list(self.allow_from)})
        self._ok("PUT", f"{base}/TSIG-ALLOW-DNSUPDATE", {"metadata": [self.tsig_name]})

    def tamper(self, name: str, content: str, ttl: int = 60, rtype: str = "A", zone: str = ZONE) -> None:
        """Change ``name`` through the API, behind a driver's back."""
        fqdn = name if name.endswith(".") else f"{name}.{zone}"
        self._ok(
            "PATCH",
            f"/api/v1/servers/localhost/zones/{zone}",
            {
                "rrsets": [
                    {
                        "name": fqdn,
                        "type": rtype,
                        "ttl": ttl,
                        "changetype": "REPLACE",
                        "records": [{"content": content, "disabled": False}],
                    }
                ]
            },
        )

    def delete(self, name: str, rtype: str = "A", zone: str = ZONE) -> None:
        fqdn = name if name.endswith(".") else f"{name}.{zone}"
        self._ok(
            "PATCH",
            f"/api/v1/servers/localhost/zones/{zone}",
            {"rrsets": [{"name": fqdn, "type": rtype, "changetype": "DELETE"}]},
        )

    def serial(self, zone: str = ZONE) -> int:
        return int(self._ok("GET", f"/api/v1/servers/localhost/zones/{zone}")["serial"])

    def rrset(self, name: str, rtype: str = "A", zone: str = ZONE) -> dict[str, Any] | None:
        """The rrset as the API holds it (for assertions; the drivers themselves resolve)."""
        fqdn = name if name.endswith(".") else f"{name}.{zone}"
        for rrset in self._ok("GET", f"/api/v1/servers/localhost/zones/{zone}")["rrsets"]:
            if rrset["name"] == fqdn and rrset["type"] == rtype:
                found: dict[str, Any] = rrset
                return found
        return None


def start_powerdns(host: str = HOST, allow_from: Sequence[str] | None = None) -> PowerDns:
    """A running PowerDNS with ``dr.example.`` (updatable with TSIG); ``cleanup(server)`` stops it and removes its folder."""
    directory = Path(tempfile.mkdtemp(prefix="hyops-pdns-"))
    directory.chmod(0o755)
    server: PowerDns | None = None
    try:
        server = PowerDns(directory, host, allow_from)
        server.start()
        server.create_zone(ZONE)
        server.allow_updates(ZONE)
    except BaseException:
        if server is not None:
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return server


def cleanup(server: PowerDns) -> None:
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="module")
def powerdns() -> Iterator[PowerDns]:
    """A running PowerDNS shared by a test module (start ~0.3 s; TESTBED.md saw ~2 s exits, here < 0.1 s).

    A test that stops it must start it again (`stop()`/`start()` keep ports, key and data).
    """
    server = start_powerdns()
    try:
        yield server
    finally:
        cleanup(server)
