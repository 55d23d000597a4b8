"""The mqtt source against a real Mosquitto on a loopback port: values, labels, broker loss, garbage, credentials."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from hybridops_daemon.config.base import SecretRef
from hybridops_daemon.config.sources import MqttBroker, MqttSource, MqttTopic
from hybridops_daemon.signals.mqtt import MalformedPayload, MqttIngest, parse_payload
from hybridops_daemon.signals.sample import Sample
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.sources import running
from tests.testbed.wait import eventually

NOW = 1_800_000_000.0  # the source's clock: observed_at of a payload without ts


def spec_for(broker: Mosquitto, name: str = "site-health", **broker_fields: Any) -> MqttSource:
    return MqttSource(
        type="mqtt",
        name=name,
        broker=MqttBroker(
            host=broker.host,
            port=broker.port,
            reconnect_min=0.05,
            reconnect_max=0.5,
            connect_timeout=2.0,
            **broker_fields,
        ),
        topics=(
            MqttTopic(filter="site/+/health/db", signal="db_up", labels=("site",)),
            MqttTopic(filter="wan/+/+/loss", signal="wan_loss", labels=("link",)),  # second `+` is ignored
        ),
    )


@asynccontextmanager
async def publisher(broker: Mosquitto, **auth: Any) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(broker.host, broker.port, identifier="test-publisher", timeout=5, **auth) as client:
        yield client


async def test_values_flow_with_labels_and_timestamps(mosquitto: Mosquitto) -> None:
    source = MqttIngest(spec_for(mosquitto), edge="edge01", node="edge01", clock=lambda: NOW)
    assert source.client_id == "hybridops-edge01-site-health"
    async with running(source) as seen, publisher(mosquitto) as pub:
        await eventually("the source to subscribe", lambda: source.connected)
        await pub.publish("site/ams/health/db", b"1", qos=1)
        await pub.publish("site/fra/health/db", b'{"value": "down", "ts": 1799999990.5}', qos=1)
        await pub.publish("wan/isp1/edge01/loss", b" 0.73 \n", qos=1)
        await pub.publish("site/par/health/db", b'{"value": null}', qos=1)
        await eventually("four samples", lambda: len(seen.samples) == 4)
    assert seen.samples == [
        Sample("db_up{site=ams}", 1.0, NOW, "mqtt:site-health", "edge01"),
        Sample("db_up{site=fra}", 0.0, 1799999990.5, "mqtt:site-health", "edge01"),
        Sample("wan_loss{link=isp1}", 0.73, NOW, "mqtt:site-health", "edge01"),
        Sample("db_up{site=par}", None, NOW, "mqtt:site-health", "edge01"),
    ]
    assert (source.received, source.emitted, source.health.malformed) == (4, 4, 0)
    assert not source.health.upstream_down


async def test_bad_topics_and_timestamps_are_counted_and_dropped(mosquitto: Mosquitto) -> None:
    source = MqttIngest(spec_for(mosquitto), edge="edge01", node="edge01", clock=lambda: NOW)
    with capture_logs() as logs:
        async with running(source) as seen, publisher(mosquitto) as pub:
            await eventually("the source to subscribe", lambda: source.connected)
            await pub.publish("site/a,b=c/health/db", b"1", qos=1)  # would forge a second label
            await pub.publish("site/ams/health/db", b'{"value": 1, "ts": 1800000000000}', qos=1)  # milliseconds
            await pub.publish("site/ams/health/db", b'{"value": 1, "ts": 1800000005}', qos=1)  # 5 s skew: clamped
            await eventually("the good sample", lambda: seen.samples)
    assert seen.samples == [Sample("db_up{site=ams}", 1.0, NOW, "mqtt:site-health", "edge01")]
    assert source.health.malformed == 2
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1, "malformed input is logged once per transition, not per message"
    assert "label value" in warnings[0]["reason"]


async def test_retained_values_without_ts_are_not_taken_as_fresh(mosquitto: Mosquitto) -> None:
    async with publisher(mosquitto) as pub:
        await pub.publish("site/old/health/db", b"up", qos=1, retain=True)
        await pub.publish("site/new/health/db", b'{"value": true, "ts": 1799999999}', qos=1, retain=True)
    source = MqttIngest(spec_for(mosquitto), edge="edge01", node="edge01", clock=lambda: NOW)
    async with running(source) as seen:
        await eventually("the retained messages", lambda: source.received == 2)
    assert seen.samples == [Sample("db_up{site=new}", 1.0, 1799999999.0, "mqtt:site-health", "edge01")]
    assert source.retained_dropped == 1


async def test_broker_restart_stops_samples_then_they_flow_again(mosquitto: Mosquitto) -> None:
    source = MqttIngest(spec_for(mosquitto), edge="edge01", node="edge01")
    async with running(source) as seen:
        await eventually("the source to subscribe", lambda: source.connected)
        async with publisher(mosquitto) as pub:
            await pub.publish("site/ams/health/db", b"1", qos=1)
            await eventually("a sample", lambda: len(seen.samples) == 1)

        mosquitto.stop()
        await eventually("the source to notice", lambda: source.health.upstream_down)
        assert not source.connected
        failures = source.health.failures
        await eventually("two failed reconnects", lambda: source.health.failures >= failures + 2)
        assert len(seen.samples) == 1, "nothing is emitted while the broker is away: the signals go UNKNOWN by age"

        mosquitto.start()  # same port, same config; the source is not restarted
        await eventually("the source to reconnect", lambda: source.connected, within=15.0)
        assert not source.health.upstream_down
        async with publisher(mosquitto) as pub:
            await pub.publish("site/ams/health/db", b'{"value": 0}', qos=1)
            await eventually("a sample after the restart", lambda: len(seen.samples) == 2)
    assert seen.samples[1].signal == "db_up{site=ams}" and seen.samples[1].value == 0.0


def _rejected(payload: bytes) -> bool:
    try:
        parse_payload(payload)
    except MalformedPayload:
        return True
    return False


garbage = st.lists(
    st.one_of(st.binary(max_size=512), st.text(max_size=256).map(lambda text: text.encode("utf-8"))),
    min_size=40,
    max_size=60,
)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=garbage)
def test_garbage_through_the_broker_never_crashes_the_source(mosquitto: Mosquitto, payloads: list[bytes]) -> None:
    # One broker for all examples (hence the suppressed health check); a fresh loop and source per example.
    async def scenario() -> None:
        source = MqttIngest(spec_for(mosquitto), edge="edge01", node="edge01", clock=lambda: NOW)
        async with running(source) as seen, publisher(mosquitto) as pub:
            await eventually("the source to subscribe", lambda: source.connected)
            for payload in payloads:
                await pub.publish("site/ams/health/db", payload, qos=1)
            await pub.publish("site/ams/health/db", b'{"value": 0.5, "ts": 1799999999}', qos=1)
            await eventually("the valid message after the garbage", lambda: source.received == len(payloads) + 1)
            await eventually("the valid sample", lambda: seen.samples and seen.samples[-1].observed_at == 1799999999)
        assert source.health.malformed == sum(map(_rejected, payloads))
        assert source.emitted == len(seen.samples) == len(payloads) + 1 - source.health.malformed
        assert all(s.value is None or -1e308 < s.value < 1e308 for s in seen.samples)

    asyncio.run(scenario())


async def test_password_by_reference_and_never_logged(
    mosquitto_factory: Callable[..., Mosquitto], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    password, wrong = "s3cret-Pa55-for-edge", "not-the-Pa55word"
    broker = mosquitto_factory(users={"hyops": password})
    monkeypatch.setenv("HYOPS_TEST_MQTT_PASSWORD", password)
    monkeypatch.setenv("HYOPS_TEST_MQTT_WRONG", wrong)
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        good = MqttIngest(
            spec_for(broker, username="hyops", password=SecretRef(env="HYOPS_TEST_MQTT_PASSWORD")), "edge01", "edge01"
        )
        bad = MqttIngest(
            spec_for(broker, "bad", username="hyops", password=SecretRef(env="HYOPS_TEST_MQTT_WRONG")),
            "edge01",
            "edge01",
        )
        unset = MqttIngest(
            spec_for(broker, "unset", username="hyops", password=SecretRef(env="HYOPS_TEST_MQTT_UNSET")),
            "edge01",
            "edge01",
        )
        async with running(good) as seen, running(bad) as bad_seen, running(unset):
            await eventually("the source to subscribe", lambda: good.connected)
            async with publisher(broker, username="hyops", password=password) as pub:
                await pub.publish("site/ams/health/db", b"true", qos=1)
                await eventually("a sample", lambda: seen.samples)
            await eventually("the wrong password to be retried", lambda: bad.health.failures >= 3)
            await eventually("the unset reference to be retried", lambda: unset.health.failures >= 2)
            assert bad.health.upstream_down and not bad.connected and not bad_seen.samples
            assert unset.health.upstream_down
    assert seen.samples[0].signal == "db_up{site=ams}" and seen.samples[0].value == 1.0
    lost = {entry["source"]: entry["reason"] for entry in logs if entry["event"].startswith("upstream lost")}
    assert set(lost) == {"bad", "unset"}, lost
    assert any(word in lost["bad"].lower() for word in ("not authori", "bad user name")), lost
    assert "HYOPS_TEST_MQTT_UNSET" in lost["unset"]
    for secret in (password, wrong):
        assert secret not in str(logs) and secret not in caplog.text


async def test_a_broker_that_never_answers_is_timed_out_without_leaks() -> None:
    # A listening socket that never speaks MQTT: TCP connects (the kernel accepts), CONNACK never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        spec = MqttSource(
            type="mqtt",
            broker=MqttBroker(port=port, connect_timeout=0.2, reconnect_min=0.05, reconnect_max=0.1),
            topics=(MqttTopic(filter="x", signal="x"),),
        )
        source = MqttIngest(spec, "edge01", "edge01")
        fds_before = len(os.listdir("/proc/self/fd"))
        with capture_logs() as logs:
            async with running(source) as seen:
                await eventually("three timed-out attempts", lambda: source.health.failures >= 3)
        await asyncio.sleep(0)  # let aiomqtt's cancelled keepalive tasks finish
        assert not seen.samples and source.health.upstream_down
        assert "timed out" in logs[0]["reason"]
        assert len(os.listdir("/proc/self/fd")) <= fds_before, "a timed-out attempt left its socket open"
