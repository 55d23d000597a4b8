"""The peer edge over a real Mosquitto: two nodes tell each other what they see, and a rule with
``both_edges: true`` acts only when both agree; a node that cannot hear its peer knows it."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import AbstractAsyncContextManager

import aiomqtt

from hybridops_daemon.config.profile import Profile
from hybridops_daemon.config.sources import MqttBroker, PeerSource
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.policy.decide import decide
from hybridops_daemon.policy.types import DecisionKind, LaneState, Observation
from hybridops_daemon.signals.peer import PeerLink
from hybridops_daemon.signals.sample import Sample
from tests.testbed import sources
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.sources import Seen
from tests.testbed.wait import eventually

LANES = {"prod": {"primary_http": 3.0}}
PROFILE = Profile.model_validate(
    {
        "name": "prod",
        "version": 1,
        "signals": {"primary_http": {"max_age": "3s"}},
        "rules": [{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5}],
        "corroboration": {"both_edges": True},
        "chains": {"cutover": [], "failback": []},
    }
)


# edge02 in a process of its own (its peer source's config as JSON in argv[1], publishing every 200 ms), so that
# SIGKILL leaves the broker to publish its last will.
EDGE02_PROCESS = """
import asyncio, sys, time
from hybridops_daemon.config.sources import PeerSource
from hybridops_daemon.observations import ObservationStore
from hybridops_daemon.signals.peer import PeerLink
from hybridops_daemon.signals.sample import Sample
store = ObservationStore()
spec = PeerSource.model_validate_json(sys.argv[1]).model_copy(update={"publish_interval": 0.2})
link = PeerLink(spec, 'edge02', 'edge01', lambda: {'prod': {'primary_http': 3.0}}, store.snapshot)
async def main():
    async with link, asyncio.TaskGroup() as group:
        group.create_task(link.run(store.put))
        while True:
            store.put(Sample('primary_http', 1.0, time.time(), 'x', 'edge02'))
            await asyncio.sleep(0.1)
asyncio.run(main())
"""


class Node:
    def __init__(self, name: str, peer: str, broker: Mosquitto, spec: PeerSource | None = None) -> None:
        self.name = name
        self.store = ObservationStore()
        spec = spec or PeerSource(
            type="peer",
            broker=MqttBroker(host=broker.host, port=broker.port, reconnect_min=0.1, reconnect_max=0.5, keepalive=1),
            publish_interval=0.2,
        )
        self.head: tuple[int, str] | None = None  # this node's journal head, as the daemon would read it
        self.heads: list[tuple[str, int, str]] = []  # the peer's, as the link handed them on
        self.link = PeerLink(
            spec,
            name,
            peer,
            lambda: LANES,
            self.store.snapshot,
            journal_head=lambda: self.head,
            on_peer_head=lambda *head: self.heads.append(head),
        )
        self.peer = peer

    def see(self, value: float) -> None:
        self.store.put(Sample("primary_http", value, time.time(), "http_probe", self.name))

    def heard(self) -> Sample | None:
        return self.store.snapshot().get(("primary_http", self.peer))

    def decide(self) -> DecisionKind:
        now = time.time()
        decision, _ = decide(
            LaneState(lane="prod", since=now), Observation(self.store.snapshot(), self.name, self.peer), PROFILE, now
        )
        return decision.kind


def running(node: Node) -> AbstractAsyncContextManager[Seen]:
    """The node's link running, handing what it hears from the peer to the node's store."""
    return sources.running(node.link, Seen(node.store.put))


async def test_both_edges_agree_before_anything_acts(mosquitto: Mosquitto) -> None:
    edge01, edge02 = Node("edge01", "edge02", mosquitto), Node("edge02", "edge01", mosquitto)
    async with running(edge01), running(edge02):
        edge01.see(0.0)  # edge01 sees the primary down
        edge02.see(1.0)  # edge02 still sees it up
        await eventually("edge01 hears edge02", lambda: (s := edge01.heard()) is not None and s.value == 1.0)
        assert edge01.decide() is DecisionKind.HOLD  # one edge's word is not enough

        edge02.see(0.0)
        await eventually("edge01 hears edge02 see it down", lambda: (s := edge01.heard()) is not None and s.value == 0.0)
        edge01.see(0.0)
        heard = edge01.heard()
        assert heard is not None and heard.source == "peer:edge02" and time.time() - heard.observed_at < 1.0
        assert edge01.decide() is DecisionKind.CUTOVER


async def test_a_dead_peer_is_unknown_at_once_not_healthy(mosquitto: Mosquitto) -> None:
    edge01, edge02 = Node("edge01", "edge02", mosquitto), Node("edge02", "edge01", mosquitto)
    async with running(edge01):
        async with running(edge02):
            edge02.see(1.0)
            await eventually("edge01 hears edge02", lambda: (s := edge01.heard()) is not None and s.value == 1.0)
        # edge02's link is gone without a clean goodbye from its side's view: the broker publishes its will
        # only on an unclean loss, so the clean close here leaves edge01 to age the signal out instead.
        await eventually(
            "the peer's signal to go stale",
            lambda: (s := edge01.heard()) is not None and time.time() - s.observed_at > 3.0,
            within=6,
        )
        edge01.see(0.0)
        observation = Observation(edge01.store.snapshot(), "edge01", "edge02")
        now = time.time()
        decision, _ = decide(LaneState(lane="prod", since=now), observation, PROFILE, now)
        assert decision.kind is DecisionKind.HOLD
        assert "primary_http@edge02" in decision.unknown_signals


async def test_losing_the_peer_uncleanly_marks_its_signals_unknown_via_the_will(mosquitto: Mosquitto) -> None:
    edge01 = Node("edge01", "edge02", mosquitto)
    async with running(edge01):
        # edge02 as a separate process, killed with SIGKILL: the broker sees the socket die and sends its will.
        config = {"type": "peer", "broker": {"host": mosquitto.host, "port": mosquitto.port, "keepalive": 1}}
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", EDGE02_PROCESS, json.dumps(config))
        try:
            await eventually("edge01 hears edge02", lambda: (s := edge01.heard()) is not None and s.value == 1.0, within=15)
            proc.kill()
            await proc.wait()
            killed_at = time.time()
            await eventually(
                "the will marks edge02 unknown", lambda: (s := edge01.heard()) is not None and s.value is None, within=6
            )
            assert time.time() - killed_at < 3.0, "the will should beat the 3 s max age"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_each_edge_hears_the_others_journal_head_and_a_malformed_one_does_not_stop_the_link(mosquitto: Mosquitto) -> None:
    edge01, edge02 = Node("edge01", "edge02", mosquitto), Node("edge02", "edge01", mosquitto)
    edge01.head, edge02.head = (5, "a" * 64), (7, "b" * 64)
    async with running(edge01), running(edge02):
        await eventually("edge01 hears edge02's head", lambda: ("edge02", 7, "b" * 64) in edge01.heads)
        await eventually("edge02 hears edge01's head", lambda: ("edge01", 5, "a" * 64) in edge02.heads)

        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="test-forger", timeout=5) as forger:
            forged = json.dumps({"node": "edge02", "seq": "7; DROP TABLE records", "hash": "b" * 64})
            await forger.publish("hybridops/peer/_head/edge02", forged, qos=1)
        await eventually("edge01 to drop the malformed head", lambda: edge01.link.health.malformed == 1)

        edge02.head = (8, "c" * 64)
        await eventually("edge01 still hears edge02's heads", lambda: ("edge02", 8, "c" * 64) in edge01.heads)
        assert set(edge01.heads) == {("edge02", 7, "b" * 64), ("edge02", 8, "c" * 64)}
        assert edge01.link.health.malformed == 1 and edge02.link.health.malformed == 0


async def test_a_node_without_a_journal_head_publishes_none(mosquitto: Mosquitto) -> None:
    edge01, edge02 = Node("edge01", "edge02", mosquitto), Node("edge02", "edge01", mosquitto)
    edge02.head = (3, "d" * 64)
    async with running(edge01), running(edge02):
        edge01.see(1.0)
        # A head would follow each summary edge01 publishes, in order on one connection: three rounds heard, none came.
        await eventually("edge02 hears three of edge01's summaries", lambda: edge02.link.received >= 4)
        await eventually("edge01 hears edge02's head", lambda: edge01.heads)
        assert edge02.heads == [] and edge02.link.health.malformed == 0
