"""Testbed fixture: a real three-member etcd 3.4 cluster, members stoppable, killable and freezable one by one.

By default on free loopback ports (``etcd_cluster``). Given ``Placement``s, each member runs on its own host address
behind a command prefix: ``tests/testbed/edgenet.py`` puts one member in each edge's network namespace
(``ip netns exec NS etcd ...``, listening on ``http://10.77.0.N:2379`` and ``:2380`` there).

``Secure`` runs it as a deployment across the internet would: TLS between members and to clients, with a CA and
certificates made at test time (``tests/testbed/pki.py``), and etcd's authentication on. With ``client_certs`` (the
recommended mode) members run ``--client-cert-auth`` and take the user from a client certificate's CN; without, users
log in with a password for a token (``token_ttl``: etcd's ``--auth-token-ttl``). Users: ``root`` (the testbed's own
etcdctl), ``edge01`` and ``edge02``, each with a role of its own that may read and write ``/hybridops/`` and nothing
else, and ``norole`` (a user with no role). ``tls_cluster`` is the secure twin of ``etcd_cluster``.

Module-scoped (a cluster takes a second or two to form); ``ensure_running()`` heals what a failed test left stopped.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from hybridops_daemon.lease.etcd_credentials import EtcdCredentials
from tests.testbed.pki import Pair, Pki
from tests.testbed.process import ComponentFailed, Process, free_port, require
from tests.testbed.wait import eventually_sync

# etcd's defaults, spelled out because timings in the tests derive from them: an election after 1 s without the
# leader's heartbeat. etcd raises every lease TTL to at least ceil(1.5 × election timeout) = 2 s (a 1 s grant → TTL 2).
HEARTBEAT_MS = 100
ELECTION_MS = 1000
MIN_LEASE_TTL = 2
PREFIX = "/hybridops"  # what the edges' roles may touch: every key a test uses lives under it
SERVER_NAME = "etcd.hybridops.test"  # in every member's certificate besides its address (for ``server_name``)
EDGES = ("edge01", "edge02")


@dataclass(frozen=True)
class Secure:
    """How a cluster guards itself (see the module's docstring)."""

    client_certs: bool = True
    token_ttl: int | None = None  # seconds an unused password token lives (etcd's default: 300)


@dataclass(frozen=True)
class Placement:
    """Where a member runs: its listen/advertise address, ports, and a prefix for its command line."""

    host: str = "127.0.0.1"
    client_port: int = 2379
    peer_port: int = 2380
    prefix: tuple[str, ...] = ()  # e.g. ("ip", "netns", "exec", NS)


@dataclass
class _Member:
    name: str
    place: Placement
    process: Process | None = None

    scheme: str = "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.place.host}:{self.place.client_port}"

    @property
    def peer_url(self) -> str:
        return f"{self.scheme}://{self.place.host}:{self.place.peer_port}"


class EtcdCluster:
    def __init__(self, root: Path, size: int = 3, placements: Sequence[Placement] | None = None,
                 extra_args: Sequence[str] = (), secure: Secure | None = None) -> None:  # fmt: skip
        """``size`` members on free loopback ports, or one member per placement (``size`` is then ignored); plaintext
        and open to anyone unless ``secure``."""
        self._binary = require("etcd")
        self._root = root
        if placements is None:
            placements = [Placement(client_port=free_port(), peer_port=free_port()) for _ in range(size)]
        scheme = "https" if secure is not None else "http"
        self._members = [_Member(f"e{i + 1}", place, scheme=scheme) for i, place in enumerate(placements)]
        self._initial = ",".join(f"{m.name}={m.peer_url}" for m in self._members)
        self._extra = list(extra_args)
        self._frozen: set[int] = set()
        self.secure = secure
        self._guarded = secure is None  # users, roles and `auth enable` happen once, when the cluster is first healthy
        self.pki = Pki(root / "pki") if secure is not None else None
        self._servers = {m.name: self.pki.server(m.name, [m.place.host, SERVER_NAME]) for m in self._members} if self.pki else {}
        self._clients = {cn: self.pki.client(cn) for cn in ("root", *EDGES, "norole")} if self.pki else {}
        self._passwords = {user: secrets.token_hex(8) for user in ("root", *EDGES, "norole")}

    def client(self, user: str) -> Pair:
        """The client certificate (and key) whose CN is ``user``."""
        return self._clients[user]

    def credentials(self, user: str | None) -> EtcdCredentials:
        """What the daemon's client presents as ``user``: its certificate, or its password (per ``Secure``); with None,
        only the CA (no client certificate, no user)."""
        if self.pki is None or self.secure is None:
            return EtcdCredentials()
        ca = self.pki.ca.read_bytes()
        if user is None:
            return EtcdCredentials(ca=ca)
        if self.secure.client_certs:
            pair = self.client(user)
            return EtcdCredentials(ca=ca, cert=pair.cert.read_bytes(), key=pair.key.read_bytes())
        return EtcdCredentials(ca=ca, user=user, password=self._passwords[user])

    def lease_config(self, user: str, folder: Path) -> dict[str, object]:
        """The ``tls`` and ``auth`` settings of a daemon config (lease section) that log in as ``user``, with the files
        they name copied into ``folder`` (the node's own: a test may replace them, as an operator renewing them would)."""
        if self.pki is None or self.secure is None:
            return {}
        folder.mkdir(parents=True, exist_ok=True)
        ca = shutil.copy(self.pki.ca, folder / "ca.pem")
        if self.secure.client_certs:
            cert, key = shutil.copy(self.client(user).cert, folder), shutil.copy(self.client(user).key, folder)
            return {"tls": {"ca": str(ca), "cert": str(cert), "key": {"file": str(key)}}}
        password = folder / f"{user}.password"
        password.write_text(self._passwords[user])
        return {"tls": {"ca": str(ca)}, "auth": {"user": user, "password": {"file": str(password)}}}

    def etcdctl_flags(self) -> list[str]:
        """The flags that make ``etcdctl`` talk to this cluster as root (none for a plaintext one)."""
        if self.pki is None or self.secure is None:
            return []
        flags = ["--cacert", str(self.pki.ca)]
        if self.secure.client_certs:
            return [*flags, "--cert", str(self._clients["root"].cert), "--key", str(self._clients["root"].key)]
        return [*flags, "--user", f"root:{self._passwords['root']}"]

    def _tls_args(self, member: _Member) -> list[str]:
        if self.pki is None or self.secure is None:
            return []
        server, ca = self._servers[member.name], str(self.pki.ca)
        args = [
            "--cert-file", str(server.cert), "--key-file", str(server.key),
            "--peer-cert-file", str(server.cert), "--peer-key-file", str(server.key), "--peer-trusted-ca-file", ca,
            "--peer-client-cert-auth",
        ]  # fmt: skip
        if self.secure.client_certs:  # etcd 3.4 demands client certificates whenever it has a trusted CA for clients
            args += ["--trusted-ca-file", ca, "--client-cert-auth"]
        if self.secure.token_ttl is not None:
            args += ["--auth-token-ttl", str(self.secure.token_ttl)]
        return args

    def _guard(self) -> None:
        """Users, a role per edge on ``PREFIX``/ only, and ``auth enable`` (etcd keeps them in its data)."""
        password = self.secure is not None and not self.secure.client_certs

        def user(name: str) -> list[str]:
            return ["user", "add", f"{name}:{self._passwords[name]}"] if password else ["user", "add", name, "--no-password"]

        steps = [user("root"), ["user", "grant-role", "root", "root"], user("norole")]
        for edge in EDGES:
            steps += [
                ["role", "add", edge],
                ["role", "grant-permission", edge, "--prefix=true", "readwrite", f"{PREFIX}/"],
                user(edge),
                ["user", "grant-role", edge, edge],
            ]
        for step in [*steps, ["auth", "enable"]]:
            done = self.etcdctl(*step)
            if done.returncode != 0:
                raise ComponentFailed(f"etcdctl {' '.join(step[:3])} failed: {done.stderr.strip()[-500:]}")
        self._guarded = True

    def etcdctl(self, *args: str, timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
        """``etcdctl`` as root against every member, from here (the root namespace); the caller checks ``returncode``."""
        argv = [require("etcdctl"), "--endpoints", ",".join(self.endpoints), *self.etcdctl_flags(),
                "--dial-timeout", f"{timeout}s", "--command-timeout", f"{timeout}s", *args]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10)

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self._members]

    def name(self, i: int) -> str:
        return self._members[i].name

    def process(self, i: int) -> Process | None:
        """Member ``i``'s process (its PID is etcd's own: ``ip netns exec`` execs, and each member leads its group)."""
        return self._members[i].process

    def running(self, i: int) -> bool:
        process = self._members[i].process
        return process is not None and process.alive()

    def healthy(self, i: int) -> bool:
        """``GET /health`` from here (the root namespace); true only while the member has a leader and quorum."""
        context = None
        if self.pki is not None:
            context = ssl.create_default_context(cafile=self.pki.ca)
            context.load_cert_chain(self._clients["root"].cert, self._clients["root"].key)
        with urllib.request.urlopen(f"{self._members[i].client_url}/health", timeout=2, context=context) as resp:
            return bool(json.load(resp).get("health") == "true")

    def start(self, i: int) -> None:
        """Start member ``i`` (again: same address, same data dir) without waiting; ``wait_healthy`` waits."""
        member = self._members[i]
        if self.running(i):
            return
        self._frozen.discard(i)
        argv = [
            *member.place.prefix, self._binary, "--name", member.name, "--data-dir", str(self._root / member.name),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", self._initial, "--initial-cluster-token", "hyops-test", "--initial-cluster-state", "new",
            "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS), *self._tls_args(member),
            *self._extra,
        ]  # fmt: skip
        member.process = Process(member.name, argv, self._root / f"{member.name}.log")

    def wait_healthy(self, timeout: float = 20.0) -> None:
        for i, member in enumerate(self._members):
            eventually_sync(
                f"etcd {member.name} healthy", functools.partial(self.healthy, i), within=timeout, proc=member.process
            )
        if not self._guarded:
            self._guard()

    def stop(self, i: int) -> None:
        self.thaw(i)  # a stopped process would not act on SIGTERM until killed
        process = self._members[i].process
        if process is not None:
            process.stop()

    def kill(self, i: int) -> None:
        """SIGKILL member ``i`` (its whole process group) and reap it: a crash, no goodbye to its peers."""
        process = self._members[i].process
        if process is not None and process.alive():
            os.killpg(process.pid, signal.SIGKILL)
            process.popen.wait(timeout=5)
        self._frozen.discard(i)

    def freeze(self, i: int) -> None:
        process = self._members[i].process
        if process is None or not process.alive():
            raise ComponentFailed(f"cannot freeze etcd {self._members[i].name}: not running")
        os.killpg(process.pid, signal.SIGSTOP)
        self._frozen.add(i)

    def thaw(self, i: int) -> None:
        process = self._members[i].process
        if i in self._frozen and process is not None and process.alive():
            os.killpg(process.pid, signal.SIGCONT)
        self._frozen.discard(i)

    def ensure_running(self) -> None:
        for i in range(len(self._members)):
            self.thaw(i)
            self.start(i)
        self.wait_healthy()

    def stop_all(self) -> None:
        for i in range(len(self._members)):
            self.stop(i)


@contextlib.contextmanager
def running(root: Path, secure: Secure | None = None, size: int = 3) -> Iterator[EtcdCluster]:
    """A cluster of ``size`` members on loopback, healthy (and guarded, if ``secure``); stopped at the end."""
    cluster = EtcdCluster(root, size=size, secure=secure)
    try:
        for i in range(size):
            cluster.start(i)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Mutual TLS: members with ``--client-cert-auth``, users from the certificates' CNs."""
    with running(tmp_path_factory.mktemp("etcd-tls"), Secure()) as cluster:
        yield cluster
