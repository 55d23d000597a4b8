"""The mqtt source's pure parts: payload parsing, topic filter matching, client arguments, construction checks."""

from __future__ import annotations

import json
import math

import aiomqtt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hybridops_daemon.config.base import SecretRef
from hybridops_daemon.config.sources import MqttBroker, MqttSource, MqttTls, MqttTopic
from hybridops_daemon.secrets import SecretUnavailable
from hybridops_daemon.signals.mqtt import MAX_PAYLOAD, MalformedPayload, MqttIngest, match_topic, parse_payload
from hybridops_daemon.signals.mqtt_connection import client_kwargs


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"0.73", (0.73, None)),
        (b"42", (42.0, None)),
        (b"-3.5e2", (-350.0, None)),
        (b".5", (0.5, None)),
        (b"  7\r\n", (7.0, None)),
        (b"1", (1.0, None)),
        (b"0", (0.0, None)),
        (b"true", (1.0, None)),
        (b"TRUE", (1.0, None)),
        (b"False", (0.0, None)),
        (b"up", (1.0, None)),
        (b" Down\n", (0.0, None)),
        (b'{"value": 0.25}', (0.25, None)),
        (b'{"value": 3, "ts": 1800000000}', (3.0, 1800000000.0)),
        (b'{"ts": 1800000000.5, "value": true}', (1.0, 1800000000.5)),
        (b'{"value": false}', (0.0, None)),
        (b'{"value": "UP"}', (1.0, None)),
        (b'{"value": "down"}', (0.0, None)),
        (b'{"value": null, "ts": 1}', (None, 1.0)),
        (b' {"value": 1} ', (1.0, None)),
    ],
)
def test_accepted_payloads(payload: bytes, expected: tuple[float | None, float | None]) -> None:
    assert parse_payload(payload) == expected


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"\xff\xfe1", "not UTF-8"),
        (b"nan", "not a number"),
        (b"NaN", "not a number"),
        (b"inf", "not a number"),
        (b"-Infinity", "not a number"),
        (b"1e999", "not finite"),
        (b"1_000", "not a number"),  # float() would take it
        ("٣".encode(), "not a number"),  # so would it take Arabic-Indic digits
        (b"0x10", "not a number"),
        (b"yes", "not a number"),
        (b'"up"', "not a number"),
        (b"null", "not a number"),
        (b"[1]", "not a number"),
        (b"1 2", "not a number"),
        (b'{"value": NaN}', "NaN is not a number"),
        (b'{"value": Infinity}', "Infinity is not a number"),
        (b'{"value": 1e999}', "not finite"),
        (b'{"value": 1' + b"0" * 400 + b"}", "out of range"),
        (b'{"value": 1, "unit": "s"}', "unknown JSON keys: 'unit'"),
        (b'{"ts": 1800000000}', "without 'value'"),
        (b'{"value": {"nested": 1}}', "not an object"),
        (b'{"value": [1]}', "not an array"),
        (b'{"value": "maybe"}', "not a string"),
        (b'{"value": 1, "ts": -5}', "positive"),
        (b'{"value": 1, "ts": 0}', "positive"),
        (b'{"value": 1, "ts": "1800000000"}', "epoch seconds"),
        (b'{"value": 1, "ts": true}', "epoch seconds"),
        (b'{"value": 1, "ts": null}', "epoch seconds"),
        (b'{"value": 1, "ts": 1e999}', "not finite"),
        (b'{"value": 1, "value": 0}', "duplicate"),
        (b'{"value": 1', "invalid JSON"),
        (b"{" * 100_000, "over 64 KiB"),
        # deep nesting: refused by the limits scan before json.loads could recurse
        (b'{"value":' + b"[" * 30_000 + b"]" * 30_000 + b"}", "payload: nesting depth over the limit of 8"),
        (b'{"value": [' + b"1," * 200 + b"1]}", "payload: entries in an array or object over the limit of 100"),
        (b'{"value": ' + b"9" * 5000 + b"}", "payload: digits in a number over the limit"),
        (b" " * MAX_PAYLOAD + b"1", "over 64 KiB"),
    ],
)
def test_rejected_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedPayload) as caught:
        parse_payload(payload)
    assert reason in caught.value.reason


def test_a_reason_never_quotes_the_payload() -> None:
    with pytest.raises(MalformedPayload) as caught:
        parse_payload(b"password=hunter2")
    assert "hunter2" not in caught.value.reason


@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_are_malformed(payload: bytes) -> None:
    _check(payload)


@given(st.text(max_size=512).map(str.encode))
def test_any_text_parses_or_is_malformed(payload: bytes) -> None:
    _check(payload)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.sampled_from(["up", "down", "Up"])
)


@given(st.dictionaries(st.sampled_from(["value", "ts", "x"]), json_scalars | st.lists(json_scalars, max_size=2)))
def test_any_json_object_parses_or_is_malformed(doc: dict[str, object]) -> None:
    _check(json.dumps(doc).encode())  # json.dumps writes NaN/Infinity for non-finite floats: those must be refused


def _check(payload: bytes) -> None:
    try:
        value, ts = parse_payload(payload)
    except MalformedPayload:
        return
    assert value is None or (isinstance(value, float) and math.isfinite(value))
    assert ts is None or (isinstance(ts, float) and math.isfinite(ts) and ts > 0)


@pytest.mark.parametrize(
    ("filter_", "topic", "expected"),
    [
        ("site/+/health/db", "site/ams/health/db", ["ams"]),
        ("site/+/health/db", "site/ams/health/web", None),
        ("site/+/health/db", "site/ams/health/db/extra", None),
        ("site/+/health/db", "site/health/db", None),
        ("site/+/+/loss", "site/ams/isp1/loss", ["ams", "isp1"]),
        ("site/+", "site/", [""]),  # `+` matches an empty level
        ("site/#", "site/ams/health/db", []),
        ("site/#", "site", []),  # `#` includes the parent level
        ("+/+/#", "a/b/c/d", ["a", "b"]),
        ("#", "anything/at/all", []),
        ("#", "$SYS/broker/version", None),  # wildcards at the start never match $ topics
        ("+/broker/version", "$SYS/broker/version", None),
        ("$SYS/+/version", "$SYS/broker/version", ["broker"]),
        ("a/b", "a/b", []),
        ("a/b", "a/c", None),
        ("$share/group/site/+", "site/ams", ["ams"]),
    ],
)
def test_match_topic(filter_: str, topic: str, expected: list[str] | None) -> None:
    assert match_topic(filter_, topic) == expected


@pytest.mark.parametrize("bad", ["", "site/#/db", "site/a+/db", "site/#x", "a\0b"])
def test_invalid_filters_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid MQTT topic filter"):
        match_topic(bad, "site")


levels = st.text(alphabet="abc", max_size=2)


@given(st.lists(levels, min_size=1, max_size=5), st.data())
def test_match_topic_agrees_with_aiomqtt(topic_levels: list[str], data: st.DataObject) -> None:
    filter_levels = [data.draw(st.sampled_from([level, "+", "x"])) for level in topic_levels]
    if data.draw(st.booleans()):
        filter_levels = [*filter_levels[: data.draw(st.integers(0, len(filter_levels)))], "#"]
    filter_, topic = "/".join(filter_levels), "/".join(topic_levels)
    assume(topic and filter_)  # neither may be empty
    captured = match_topic(filter_, topic)
    assert (captured is not None) == aiomqtt.Topic(topic).matches(filter_)
    if captured is not None:
        assert captured == [level for want, level in zip(filter_levels, topic_levels, strict=False) if want == "+"]


def spec(*topics: MqttTopic, **broker: object) -> MqttSource:
    return MqttSource(type="mqtt", broker=MqttBroker.model_validate(broker), topics=topics)


def test_client_kwargs_resolve_the_password_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_PW", "s3cret")
    broker = MqttBroker(host="mq.example", port=8883, username="edge", password=SecretRef(env="MQTT_PW"), keepalive=15)
    assert client_kwargs(broker, "hybridops-edge01-mqtt") == {
        "hostname": "mq.example",
        "port": 8883,
        "identifier": "hybridops-edge01-mqtt",
        "keepalive": 15,
        "timeout": math.inf,  # aiomqtt's own timeout is off: the callers bound each call (asyncio.timeout)
        "username": "edge",
        "password": "s3cret",
    }
    monkeypatch.delenv("MQTT_PW")
    with pytest.raises(SecretUnavailable, match="MQTT_PW"):
        client_kwargs(broker, "x")


def test_client_kwargs_tls() -> None:
    broker = MqttBroker(tls=MqttTls(ca_file="/etc/ca.pem", cert_file="/etc/c.pem", key_file="/etc/k.pem"))
    tls = client_kwargs(broker, "x")["tls_params"]
    assert tls == aiomqtt.TLSParameters(ca_certs="/etc/ca.pem", certfile="/etc/c.pem", keyfile="/etc/k.pem")
    assert client_kwargs(MqttBroker(tls=MqttTls()), "x")["tls_params"] == aiomqtt.TLSParameters()


def test_construction_checks_labels_against_wildcards() -> None:
    ok = MqttIngest(spec(MqttTopic(filter="a/+/+/b", signal="s", labels=("site",))), "edge01", "edge01")
    assert ok.client_id == "hybridops-edge01-mqtt" and ok.name == "mqtt"
    with pytest.raises(ValueError, match="'a/\\+/b' has 1 '\\+' wildcard"):
        MqttIngest(spec(MqttTopic(filter="a/+/b", signal="s", labels=("site", "link"))), "edge01", "edge01")
    with pytest.raises(ValueError, match="invalid MQTT topic filter 'a/b\\+'"):
        MqttIngest(spec(MqttTopic(filter="a/b+", signal="s")), "edge01", "edge01")
    with pytest.raises(ValueError, match="label names"):
        MqttIngest(spec(MqttTopic(filter="a/+", signal="s", labels=("x=y",))), "edge01", "edge01")
    with pytest.raises(ValueError, match="password needs a username"):
        MqttIngest(spec(MqttTopic(filter="a", signal="s"), password={"env": "X"}), "edge01", "edge01")
