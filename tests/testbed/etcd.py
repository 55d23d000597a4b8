"""Testbed fixture: a real three-member etcd 3.4 cluster on free loopback ports, members stoppable and freezable one by one.

Module-scoped (a cluster takes a second or two to form); ``ensure_running()`` heals what a failed test left stopped.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed.process import ComponentFailed, Process, free_port, require, wait_until


@dataclass
class _Member:
    name: str
    client_port: int
    peer_port: int
    process: Process | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self._binary = require("etcd")
        self._root = root
        self._members = [_Member(f"e{i + 1}", free_port(), free_port()) for i in range(size)]
        self._initial = ",".join(f"{m.name}={m.peer_url}" for m in self._members)
        self._frozen: set[int] = set()

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self._members]

    def healthy(self, i: int) -> bool:
        with urllib.request.urlopen(f"{self._members[i].client_url}/health", timeout=2) as resp:
            return bool(json.load(resp).get("health") == "true")

    def start(self, i: int) -> None:
        """Start member ``i`` (again: same ports, same data dir) without waiting; ``wait_healthy`` waits."""
        member = self._members[i]
        if member.process is not None and member.process.alive():
            return
        argv = [
            self._binary, "--name", member.name, "--data-dir", str(self._root / member.name),
            "--listen-client-urls", member.client_url, "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", self._initial, "--initial-cluster-token", "hyops-test", "--initial-cluster-state", "new",
        ]  # fmt: skip
        member.process = Process(member.name, argv, self._root / f"{member.name}.log")

    def wait_healthy(self, timeout: float = 20.0) -> None:
        for i, member in enumerate(self._members):
            wait_until(f"etcd {member.name} healthy", functools.partial(self.healthy, i), timeout=timeout, proc=member.process)

    def stop(self, i: int) -> None:
        self.thaw(i)  # a stopped process would not act on SIGTERM until killed
        process = self._members[i].process
        if process is not None:
            process.stop()

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


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    try:
        for i in range(3):
            cluster.start(i)
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop_all()
