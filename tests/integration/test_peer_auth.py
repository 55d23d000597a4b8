"""The authenticated peer link over a real Mosquitto with TLS, a password per edge and the shipped ACL
(config/mosquitto/hybridops.acl). The threat: broker credentials leak. A client holding them may publish on edge02's
topics and read them; what it sends must not move edge01, and edge01's counters must say why each message was dropped."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybridops_daemon.cli.ctl import main as ctl
from hybridops_daemon.config.sources import PeerSource
from hybridops_daemon.metrics import Metrics
from hybridops_daemon.policy.types import DecisionKind, LaneStatus
from hybridops_daemon.signals.peer_auth import DROP_REASONS, HmacCodec
from tests.integration import test_peer_link as peer_link
from tests.integration.test_peer_link import EDGE02_PROCESS
from tests.testbed import sources
from tests.testbed.inprocess import daemon_from, running
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.process import free_port
from tests.testbed.sources import Seen
from tests.testbed.wait import eventually

ACL = Path(__file__).resolve().parents[2] / "config" / "mosquitto" / "hybridops.acl"
PASSWORDS = {"edge01": secrets.token_hex(8), "edge02": secrets.token_hex(8)}
MAX_SKEW = 4.0


@pytest.fixture
def broker(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return mosquitto_factory(users=PASSWORDS, tls=True, acl=ACL.read_text())


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "peer-key"
    path.write_text(secrets.token_hex(32) + "\n")
    return path


def spec(broker: Mosquitto, user: str, key_file: Path | None, tmp: Path) -> dict[str, Any]:
    """A peer source over TLS as ``user``, signing with the key in ``key_file`` (None: no auth)."""
    password = tmp / f"{user}-mqtt-password"
    password.write_text(PASSWORDS[user])
    mqtt = {
        "host": broker.host,  # on the broker's certificate (checked), as is localhost
        "port": broker.port,
        "username": user,
        "password": {"file": str(password)},
        "tls": {"ca_file": str(broker.ca)},
        "reconnect_min": "100ms",
        "reconnect_max": "500ms",
        "keepalive": "1s",
    }
    auth = {"key": {"file": str(key_file)}, "max_skew": f"{MAX_SKEW}s"} if key_file is not None else None
    return {"type": "peer", "broker": mqtt, "publish_interval": "200ms", "auth": auth}


class Node(peer_link.Node):
    """A node of test_peer_link, its link over TLS as its own user, signing with the key in ``key_file``."""

    def __init__(self, name: str, peer: str, broker: Mosquitto, key_file: Path | None, tmp: Path) -> None:
        super().__init__(name, peer, broker, PeerSource.model_validate(spec(broker, name, key_file, tmp)))
        self.seen = Seen(self.store.put)

    async def keep_seeing(self, value: float) -> None:
        while True:
            self.see(value)
            await asyncio.sleep(0.1)

    def running(self) -> AbstractAsyncContextManager[Seen]:
        return sources.running(self.link, self.seen)

    def dropped(self) -> dict[str, int]:
        return {reason: count for reason, count in self.link.health.dropped.items() if count}


def client(broker: Mosquitto, user: str, identifier: str) -> aiomqtt.Client:
    """A plain MQTT client with ``user``'s broker credentials, as whoever stole them would use them."""
    tls = aiomqtt.TLSParameters(ca_certs=str(broker.ca))
    return aiomqtt.Client(
        broker.host, broker.port, identifier=identifier, username=user, password=PASSWORDS[user], tls_params=tls, timeout=5
    )


class Spy:
    """Reads edge02's topics with leaked credentials (edge01's: the ACL lets only edge01 read them) and keeps every
    message with its sequence number and stamp (readable on the wire: signed, not encrypted) and its arrival."""

    def __init__(self) -> None:
        self.captured: list[tuple[str, bytes, int, float, float]] = []  # topic, payload, seq, ts, arrived (time.time)

    async def listen(self, broker: Mosquitto) -> None:
        async with client(broker, "edge01", "spy") as spy:
            await spy.subscribe("hybridops/peer/+/edge02", qos=1)
            async for message in spy.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                try:
                    msg = json.loads(payload)["msg"]
                except (ValueError, KeyError):
                    continue  # what the thief sends on the same topics
                self.captured.append((message.topic.value, payload, msg["seq"], msg["ts"], time.time()))

    def summaries(self) -> list[tuple[str, bytes, int, float, float]]:
        return [m for m in self.captured if m[0] == "hybridops/peer/prod/edge02"]


async def test_edges_over_tls_with_their_own_users_hear_each_other_and_drop_nothing(
    broker: Mosquitto, key_file: Path, tmp_path: Path
) -> None:
    edge01 = Node("edge01", "edge02", broker, key_file, tmp_path)
    edge02 = Node("edge02", "edge01", broker, key_file, tmp_path)
    edge01.head, edge02.head = (5, "a" * 64), (7, "b" * 64)
    async with edge01.running(), edge02.running():
        edge01.see(0.0)
        edge02.see(1.0)
        await eventually("edge01 hears edge02", lambda: (s := edge01.heard()) is not None and s.value == 1.0)
        await eventually("edge02 hears edge01", lambda: (s := edge02.heard()) is not None and s.value == 0.0)
        await eventually("each hears the other's journal head", lambda: edge01.heads and edge02.heads)
        assert edge01.heads[0] == ("edge02", 7, "b" * 64) and edge02.heads[0] == ("edge01", 5, "a" * 64)
        assert edge01.link.authenticated and edge02.link.authenticated
        heard = edge01.heard()
        assert heard is not None and time.time() - heard.observed_at < 1.0  # dated by its send time: fresh
    assert edge01.dropped() == {} and edge02.dropped() == {}


async def test_the_shipped_acl_keeps_one_edges_credentials_from_publishing_as_the_other(broker: Mosquitto) -> None:
    got: dict[str, list[str]] = {"edge01": [], "edge02": []}

    async def listen(user: str, topics: str) -> None:
        async with client(broker, user, f"listener-{user}") as listener:
            await listener.subscribe(topics, qos=1)
            got[user].append("subscribed")
            async for message in listener.messages:
                got[user].append(message.topic.value)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(listen("edge01", "hybridops/peer/+/edge02")), group.create_task(listen("edge02", "#"))]
        await eventually("both listeners subscribed", lambda: got["edge01"] and got["edge02"])
        async with client(broker, "edge01", "intruder") as intruder:
            await intruder.publish("hybridops/peer/prod/edge02", b"as edge02", qos=1)  # denied: dropped by the broker
            await intruder.publish("hybridops/peer/prod/edge01", b"as itself", qos=1)  # its own topic
        await eventually("edge02 hears edge01 on its own topic", lambda: "hybridops/peer/prod/edge01" in got["edge02"])
        async with client(broker, "edge02", "edge02-itself") as edge02:
            await edge02.publish("hybridops/peer/prod/edge02", b"genuine", qos=1)
        await eventually("edge01 hears edge02", lambda: len(got["edge01"]) > 1)
        await asyncio.sleep(0.3)
        for task in tasks:
            task.cancel()
    # edge02 read only edge01's topic (not edge02's own, not the denied one); edge01 got only edge02's own message.
    assert got == {"edge01": ["subscribed", "hybridops/peer/prod/edge02"], "edge02": ["subscribed", "hybridops/peer/prod/edge01"]}


async def test_a_client_with_leaked_broker_credentials_cannot_move_edge01_and_the_counters_say_why(
    broker: Mosquitto, key_file: Path, tmp_path: Path
) -> None:
    edge01 = Node("edge01", "edge02", broker, key_file, tmp_path)
    edge02 = Node("edge02", "edge01", broker, key_file, tmp_path)
    spy = Spy()
    async with asyncio.TaskGroup() as group, edge02.running():
        # edge01 sees the primary down; edge02 sees it up. A forged "edge02 sees it down too" would make edge01 cut over.
        seeing = [group.create_task(edge01.keep_seeing(0.0)), group.create_task(edge02.keep_seeing(1.0))]
        listening = group.create_task(spy.listen(broker))
        # Capture edge02 before edge01 listens: what edge01 never saw, replayed later, is out of order (or stale).
        await eventually("captures older than the skew", lambda: spy.captured and time.time() - spy.captured[0][3] > MAX_SKEW + 1)
        unseen = len(spy.captured)
        async with edge01.running():
            await eventually("edge01 hears edge02", lambda: (s := edge01.heard()) is not None and s.value == 1.0)
            codec = edge01.link.codec  # what edge01 accepted: which captures it saw, and which it never did
            assert isinstance(codec, HmacCodec) and codec.heard is not None
            first = codec.heard.high
            await eventually("edge01 accepts three more", lambda: codec.heard is not None and codec.heard.high >= first + 3)
            now = time.time()
            summaries = spy.summaries()
            accepted = [m for m in summaries if first <= m[2] <= codec.heard.high][:3]
            late = [m for m in spy.captured[:unseen] if m[0].endswith("prod/edge02") and now - m[3] < MAX_SKEW - 1.5][-2:]
            old = [m for m in spy.captured[:unseen] if now - m[3] > MAX_SKEW + 0.5][:2]
            assert len(accepted) == 3 and len(late) == 2 and len(old) == 2, (len(accepted), len(late), len(old))

            forger = HmacCodec(b"f" * 64, "edge02", "edge01", MAX_SKEW)  # the attacker's guess at the key
            down = {"node": "edge02", "lane": "prod", "signals": {"primary_http": {"value": 0.0, "age": 0.0, "unknown": False}}}
            topic = "hybridops/peer/prod/edge02"
            async with client(broker, "edge02", "thief") as thief:  # edge02's leaked password: the ACL lets it publish
                for payload in (forger.seal(topic, down), forger.seal(topic, down)):
                    await thief.publish(topic, payload, qos=1)  # forged
                await thief.publish("hybridops/peer/_status/edge02", summaries[-1][1], qos=1)  # a summary as a status: forged
                await thief.publish(topic, json.dumps(down).encode(), qos=1)  # the pre-auth format: unsigned
                await thief.publish(topic, b"\x00garbage", qos=1)  # malformed
                for captured in (*accepted, *late, *old):  # replayed, reordered, stale
                    await thief.publish(captured[0], captured[1], qos=1)
            expected = {"forged": 3, "unsigned": 1, "malformed": 1, "replayed": 3, "reordered": 2, "stale": 2}
            await eventually("edge01 to drop every one", lambda: edge01.dropped() == expected)
            mark = codec.heard.high
            await eventually("edge02 still heard", lambda: codec.heard is not None and codec.heard.high >= mark + 3)
            assert edge01.dropped() == expected  # and not one genuine message dropped meanwhile

            # Not one sample came from the attack: edge02 said "up" throughout, and the lane holds.
            assert {s.value for s in edge01.seen.samples if s.edge == "edge02"} == {1.0}
            assert edge01.decide() is DecisionKind.HOLD
            exposition = Metrics(dict, dict, lambda: {"peer": edge01.link}, lambda: None).exposition().decode()
            scraped = {
                sample.labels["reason"]: sample.value
                for family in text_string_to_metric_families(exposition)
                for sample in family.samples
                if sample.name == "hybridops_peer_messages_dropped_total"
            }
            assert scraped == {reason: expected[reason] for reason in DROP_REASONS}
        for task in (listening, *seeing):
            task.cancel()


async def test_a_signed_will_marks_edge02_unknown_once_and_a_replay_of_it_later_does_nothing(
    broker: Mosquitto, key_file: Path, tmp_path: Path
) -> None:
    edge01 = Node("edge01", "edge02", broker, key_file, tmp_path)
    config = json.dumps(spec(broker, "edge02", key_file, tmp_path))
    spy = Spy()
    processes: list[asyncio.subprocess.Process] = []

    async def start_edge02() -> None:
        processes.append(await asyncio.create_subprocess_exec(sys.executable, "-c", EDGE02_PROCESS, config))

    try:
        async with asyncio.TaskGroup() as group, edge01.running():
            listening = group.create_task(spy.listen(broker))
            await start_edge02()
            await eventually("edge01 hears edge02", lambda: (s := edge01.heard()) is not None and s.value == 1.0, within=15)
            processes[0].kill()
            await processes[0].wait()
            await eventually("the will marks edge02 unknown", lambda: (s := edge01.heard()) is not None and s.value is None)
            wills = await eventually(
                "the spy to capture the will",
                lambda: [m for m in spy.captured if m[0] == "hybridops/peer/_status/edge02" and b'"online":false' in m[1]],
            )
            assert len(wills) == 1 and edge01.dropped() == {}

            await start_edge02()  # a new boot
            await eventually(
                "edge01 hears the new edge02", lambda: (s := edge01.heard()) is not None and s.value == 1.0, within=15
            )
            mark = edge01.seen.mark()
            async with client(broker, "edge02", "thief") as thief:
                await thief.publish(wills[0][0], wills[0][1], qos=1)
            await eventually("edge01 to drop the old will", lambda: edge01.dropped() == {"replayed": 1})
            await edge01.seen.first("primary_http", 1.0, since=mark + 2)  # two more summaries heard since
            assert None not in {s.value for s in edge01.seen.of("primary_http", mark)}
            listening.cancel()
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


# ---------------------------------------------------------------------------------------- a whole daemon's lane

LANE_PROFILE = """\
name: prod
version: 1
signals: {primary_http: {max_age: 3s}}
rules: [{name: primary_down, signal: primary_http, direction: below, trip: 0.5, for: 1s}]
corroboration: {both_edges: true}     # edge02's word decides: exactly what a forger would supply
chains:
  cutover: [{id: capacity, module: compute/capacity@v1, inputs: {name: cloud-standby, state: running}}]
  failback: [{id: capacity, module: compute/capacity@v1, inputs: {name: cloud-standby, state: stopped}}]
"""
WATCH = 5.0  # seconds: without auth the forgeries cut the lane over well within this


@pytest.mark.parametrize("authenticated", [True, False], ids=["auth", "no-auth"])
async def test_forged_primary_down_from_edge02_moves_edge01s_lane_only_without_auth(
    broker: Mosquitto, key_file: Path, authenticated: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    with tempfile.TemporaryDirectory(prefix="hyops-") as tmp:  # short: the control socket's path
        state = Path(tmp)
        (state / "prod.yaml").write_text(LANE_PROFILE)
        probe = {"type": "http_probe", "signal": "primary_http", "url": f"http://127.0.0.1:{free_port()}/", "interval": "200ms"}
        peer = spec(broker, "edge01", key_file if authenticated else None, state)
        config = state / "daemon.yaml"
        config.write_text(
            f"node: edge01\npeer: edge02\nstate_dir: {state}\ntick: 200ms\n"
            f"sources: [{json.dumps(probe)}, {json.dumps(peer)}]\n"  # edge01's own probe: the primary is down
            f"lanes:\n  prod:\n    profile: {state / 'prod.yaml'}\n    drivers: {{sandbox: {{}}}}\n"
            "    readiness: {enabled: false}\n"
        )
        edge01 = daemon_from(config)
        forger = HmacCodec(b"f" * 64, "edge02", "edge01", MAX_SKEW)  # without the key, the best a thief can do
        topic = "hybridops/peer/prod/edge02"
        down = {"node": "edge02", "lane": "prod", "signals": {"primary_http": {"value": 0.0, "age": 0.0, "unknown": False}}}
        async with running(edge01), client(broker, "edge02", "thief") as thief:
            started = time.monotonic()
            moved = None
            while time.monotonic() - started < WATCH and moved is None:
                await thief.publish(topic, forger.seal(topic, down), qos=1)
                await thief.publish(topic, json.dumps(down).encode(), qos=1)
                await asyncio.sleep(0.2)
                lane = edge01.lanes.get("prod")
                if lane is not None and lane.state.status in (LaneStatus.CUTTING_OVER, LaneStatus.ON_STANDBY):
                    moved = time.monotonic() - started
            sock = str(state / "hyops.sock")
            assert await asyncio.to_thread(ctl, ["--socket", sock, "status"]) == 0
            status = capsys.readouterr().out
            assert edge01.journal is not None
            cutovers = [r for r in edge01.journal.records(kinds=["decision"]) if r.body.get("kind") == "cutover"]
    if not authenticated:  # the control: the same forgeries, trusted, move the lane
        assert moved is not None and cutovers, "forged messages should move an unauthenticated lane"
        assert "peer messages not authenticated" in status
        return
    assert moved is None and cutovers == [], f"the lane moved after {moved} s"
    dropped = {reason: count for reason, count in edge01.sources.sources["peer"].health.dropped.items() if count}
    assert set(dropped) == {"forged", "unsigned"} and dropped["forged"] >= 10, dropped
    assert f"peer: peer messages dropped: unsigned {dropped['unsigned']}, forged {dropped['forged']}" in status
