"""The signal sources: each one's config model, and the one table that declares them.

A source type is declared once, in ``SOURCES``: its config model (whose ``type`` literal is the type name) and its
class, named by import path so that a node without BGP never imports the BGP code. The config schema (the
``Source`` union ``DaemonConfig.sources`` holds) and the registry (``signals.registry.build_source``) are derived
from the table. To add a source, see README.md, "How to add a source".
"""

from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, get_args, get_origin

from pydantic import Field, field_validator, model_validator

from hybridops_daemon.config.base import Duration, PositiveDuration, SecretRef, SignalName, Strict


class SourceSpec(Strict):
    """What every source's config has: its type (the discriminator) and a name unique in the daemon config."""

    type: str
    name: str
    needs_peer: ClassVar[bool] = False  # whether the daemon config must name the other edge (`peer:`)


class HttpProbeSource(SourceSpec):
    """GET ``url`` every ``interval``: the signal is 1 when the status matches (and latency is in bounds), else 0."""

    type: Literal["http_probe"]
    name: str = Field(default="", description="default: http_probe:<signal>")
    signal: SignalName
    url: str
    interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 2.0
    expect_status: int = Field(default=200, ge=100, le=599)
    max_latency: PositiveDuration | None = None
    latency_signal: SignalName | None = Field(
        default=None, description="also emit each probe's latency (seconds to the answer; a timeout counts its timeout)"
    )

    @model_validator(mode="after")
    def _named_after_its_signal(self) -> HttpProbeSource:
        if not self.name:
            object.__setattr__(self, "name", f"http_probe:{self.signal}")  # a frozen model's own default, set once
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


class MqttTls(Strict):
    ca_file: Path | None = Field(default=None, description="CA bundle; default: the system's")
    cert_file: Path | None = None
    key_file: Path | None = None


class MqttBroker(Strict):
    """An MQTT broker connection, shared by the ``mqtt`` and ``peer`` sources."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = Field(default=None, description="default: hybridops-<node>-<source>")
    username: str | None = None
    password: SecretRef | None = Field(default=None, description="by reference (env or file), never inline")
    tls: MqttTls | None = None
    keepalive: Duration = 30.0
    connect_timeout: PositiveDuration = 5.0
    reconnect_min: PositiveDuration = 0.5
    reconnect_max: PositiveDuration = 30.0


class MqttTopic(Strict):
    """``filter`` may hold ``+`` wildcards; ``labels`` names them in order, so ``site/+/health/db`` with
    ``labels: [site]`` turns ``site/ams/health/db`` into the signal ``db_up{site=ams}``."""

    filter: str = Field(min_length=1)
    signal: SignalName
    labels: tuple[str, ...] = ()


class MqttSource(SourceSpec):
    """Payloads: JSON ``{"value": ..., "ts": ...}``, a bare number, or true/false/up/down (1/0)."""

    type: Literal["mqtt"]
    name: str = "mqtt"
    broker: MqttBroker = MqttBroker()
    qos: Literal[0, 1, 2] = 1
    topics: tuple[MqttTopic, ...] = Field(min_length=1)


class PrometheusQuery(Strict):
    signal: SignalName
    query: str = Field(min_length=1, description="PromQL instant query; one series, or one per `label` value")
    label: str | None = Field(default=None, description="split a multi-series result into signal{label=value}")
    empty: Literal["down", "unknown"] = Field(
        default="unknown",
        description="an empty result: 'down' (the series vanished because its target died: value 0) or 'unknown'",
    )


class PrometheusSource(SourceSpec):
    type: Literal["prometheus"]
    name: str = "prometheus"
    url: str
    interval: PositiveDuration = 5.0
    timeout: PositiveDuration = 3.0
    queries: tuple[PrometheusQuery, ...] = Field(min_length=1)


class AlertRoute(Strict):
    """Alerts whose labels equal every ``match`` entry drive ``signal``: ``firing`` while any fires, else ``resolved``."""

    signal: SignalName
    match: dict[str, str] = Field(min_length=1)
    firing: float = 0.0
    resolved: float = 1.0


class AlertmanagerSource(SourceSpec):
    type: Literal["alertmanager"]
    name: str = "alertmanager"
    listen: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    path: str = Field(default="/alertmanager", pattern=r"^/[\w./-]*$")
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    token: SecretRef | None = Field(default=None, description="if set, requests must carry 'Authorization: Bearer <token>'")
    alerts: tuple[AlertRoute, ...] = Field(min_length=1)


class BgpPeer(Strict):
    """``peer`` is the neighbor address (FRR) or the protocol name (BIRD). Emits ``signal`` (1 established, 0 not)
    and ``<signal>_prefixes`` (prefixes received)."""

    peer: str
    signal: SignalName


class BgpSource(SourceSpec):
    type: Literal["bgp"]
    name: str = "bgp"
    daemon: Literal["frr", "bird"]
    socket: Path = Field(description="FRR: the vty socket directory (vtysh --vty_socket); BIRD: the control socket")
    interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 2.0
    peers: tuple[BgpPeer, ...] = Field(min_length=1)


class IpsecTunnel(Strict):
    """Emits ``signal`` = 1 while the IKE SA (and, if named, its CHILD SA) is established/installed, else 0."""

    ike: str
    child: str | None = None
    signal: SignalName


class IpsecSource(SourceSpec):
    type: Literal["ipsec"]
    name: str = "ipsec"
    vici: Path = Path("/var/run/charon.vici")
    interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 2.0
    tunnels: tuple[IpsecTunnel, ...] = Field(min_length=1)


class PeerAuth(Strict):
    """End-to-end authentication of every peer message (HMAC-SHA256), whatever the broker lets through."""

    key: SecretRef = Field(description="the key both edges share, by reference; at least 32 characters (openssl rand -hex 32)")
    max_skew: PositiveDuration = Field(
        default=10.0, description="a message stamped further than this from this node's clock (either way) is stale"
    )


class PeerSource(SourceSpec):
    """Publishes this node's observation summary per lane on ``<prefix>/<lane>/<node>`` and reads the peer's."""

    needs_peer: ClassVar[bool] = True
    type: Literal["peer"]
    name: str = "peer"
    broker: MqttBroker = MqttBroker()
    topic_prefix: str = "hybridops/peer"
    publish_interval: PositiveDuration = 1.0
    auth: PeerAuth | None = Field(default=None, description="without it anyone who may publish on the broker speaks for the peer")


@dataclass(frozen=True)
class SourceDeclaration:
    """One source type: its config model, and its class as ``module:Class`` (built by ``Class.from_context``)."""

    config: type[SourceSpec]
    factory: str

    @property
    def type(self) -> str:
        """The type name, as the config model's ``type`` literal spells it (pydantic needs that literal anyway)."""
        annotation = self.config.model_fields["type"].annotation
        if get_origin(annotation) is not Literal or len(get_args(annotation)) != 1:
            raise TypeError(f"{self.config.__name__}.type must be a Literal of one type name")
        return str(get_args(annotation)[0])


# In the order check-config lists them ("must be one of ...").
SOURCES: tuple[SourceDeclaration, ...] = (
    SourceDeclaration(HttpProbeSource, "hybridops_daemon.signals.http_probe:HttpProbe"),
    SourceDeclaration(MqttSource, "hybridops_daemon.signals.mqtt:MqttIngest"),
    SourceDeclaration(PrometheusSource, "hybridops_daemon.signals.prometheus:PrometheusPoller"),
    SourceDeclaration(AlertmanagerSource, "hybridops_daemon.signals.alertmanager:AlertmanagerReceiver"),
    SourceDeclaration(BgpSource, "hybridops_daemon.signals.bgp:BgpPoller"),
    SourceDeclaration(IpsecSource, "hybridops_daemon.signals.ipsec:IpsecPoller"),
    SourceDeclaration(PeerSource, "hybridops_daemon.signals.peer:PeerLink"),
)


def _by_type(declarations: tuple[SourceDeclaration, ...]) -> dict[str, SourceDeclaration]:
    by_type = {declaration.type: declaration for declaration in declarations}
    if len(by_type) != len(declarations):
        raise TypeError("two source declarations share a type name")
    return by_type


SOURCES_BY_TYPE = _by_type(SOURCES)

# The union pydantic validates against is built from the table; mypy sees the common base.
if TYPE_CHECKING:
    Source = SourceSpec
else:
    Source = Annotated[
        functools.reduce(operator.or_, (declaration.config for declaration in SOURCES)), Field(discriminator="type")
    ]
