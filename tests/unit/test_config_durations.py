"""Intervals and timeouts must be above zero; the durations where zero means something still take it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from hybridops_daemon.config.models import DaemonConfig, EtcdLeaseConfig, RetentionConfig
from hybridops_daemon.config.profile import ActionLimit, DrillPolicy, FailbackPolicy, Profile, Rule, SignalSpec, Step
from hybridops_daemon.config.sources import BgpSource, HttpProbeSource, IpsecSource, MqttBroker, PeerSource, PrometheusSource
from hybridops_daemon.drivers.declarations import DECLARATIONS

STEP = {"id": "fip", "module": "network/floating-ip@v1"}
MINIMAL: dict[type[BaseModel], dict[str, Any]] = {
    HttpProbeSource: {"type": "http_probe", "signal": "up", "url": "http://127.0.0.1:8081/health"},
    PrometheusSource: {"type": "prometheus", "url": "http://127.0.0.1:9090", "queries": [{"signal": "up", "query": "up"}]},
    BgpSource: {"type": "bgp", "daemon": "frr", "socket": "/run/frr", "peers": [{"peer": "10.0.0.1", "signal": "bgp"}]},
    IpsecSource: {"type": "ipsec", "tunnels": [{"ike": "onprem", "signal": "ipsec"}]},
    PeerSource: {"type": "peer"},
    MqttBroker: {},
    EtcdLeaseConfig: {"type": "etcd", "endpoints": ["http://10.0.0.1:2379"]},
    RetentionConfig: {},
    FailbackPolicy: {},
    DrillPolicy: {},
    ActionLimit: {},
    DaemonConfig: {"node": "edge01", "state_dir": "state", "lanes": {"prod": {"profile": "prod.yaml"}}},
    SignalSpec: {"max_age": "5s"},
    Rule: {"name": "down", "signal": "up", "direction": "below", "trip": 0.5},
    Step: STEP,
    Profile: {"name": "prod", "version": 1, "chains": {"cutover": [STEP], "failback": [STEP]}},
}

MUST_BE_POSITIVE = [
    (HttpProbeSource, "interval"),
    (HttpProbeSource, "timeout"),
    (HttpProbeSource, "max_latency"),
    (PrometheusSource, "interval"),
    (PrometheusSource, "timeout"),
    (BgpSource, "interval"),
    (BgpSource, "timeout"),
    (IpsecSource, "interval"),
    (IpsecSource, "timeout"),
    (PeerSource, "publish_interval"),
    (MqttBroker, "connect_timeout"),
    (MqttBroker, "reconnect_min"),  # the peer link's backoff doubles it: from 0 it would reconnect in a hot loop
    (MqttBroker, "reconnect_max"),
    (EtcdLeaseConfig, "ttl"),
    (EtcdLeaseConfig, "op_timeout"),
    (EtcdLeaseConfig, "campaign_every"),
    (RetentionConfig, "check_every"),
    (DaemonConfig, "tick"),
    (SignalSpec, "max_age"),  # 0 would leave the signal UNKNOWN from the moment it is read
    (Step, "timeout"),
    (Profile, "approval_timeout"),
]

# Zero is meaningful here: keepalive off, no confirmation time, no pause between retries, and so on.
ZERO_ALLOWED = [
    (MqttBroker, "keepalive"),
    (Rule, "for"),
    (Step, "backoff"),
    (Step, "expected_duration"),
    (DaemonConfig, "shutdown_grace"),
    (Profile, "cooldown"),
    (FailbackPolicy, "stable_for"),
    (DrillPolicy, "teardown_after"),
    (ActionLimit, "window"),
]


@pytest.mark.parametrize(("model", "key"), MUST_BE_POSITIVE, ids=[f"{m.__name__}.{k}" for m, k in MUST_BE_POSITIVE])
@pytest.mark.parametrize("zero", ["0s", "0ms", 0, 0.0])
def test_a_zero_interval_or_timeout_is_refused_by_the_model(model: type[BaseModel], key: str, zero: object) -> None:
    with pytest.raises(ValidationError) as excinfo:
        model.model_validate({**MINIMAL[model], key: zero})
    errors = excinfo.value.errors()
    assert [(error["loc"], error["msg"]) for error in errors] == [((key,), 'Value error, must be a duration above 0, like "30s"')]


@pytest.mark.parametrize(("model", "key"), ZERO_ALLOWED, ids=[f"{m.__name__}.{k}" for m, k in ZERO_ALLOWED])
def test_zero_still_means_what_it_means_where_it_means_something(model: type[BaseModel], key: str) -> None:
    model.model_validate({**MINIMAL[model], key: "0s"})


@pytest.mark.parametrize(
    ("driver", "settings", "key"),
    [
        ("hcloud", {"token": {"env": "T"}, "request_timeout": "0s"}, "request_timeout"),
        ("powerdns", {"api_url": "http://127.0.0.1:1", "api_key": {"env": "K"}, "timeout": 0}, "timeout"),
        ("ansible", {"timeout": "0s"}, "timeout"),
    ],
)
def test_driver_timeouts_must_be_above_zero(driver: str, settings: dict[str, object], key: str) -> None:
    declaration = next(d for d in DECLARATIONS if d.name == driver)
    with pytest.raises(ValidationError, match=key):
        declaration.config.model_validate(settings)
