"""The daemon config (one per node): its signal sources, each lane's profile and drivers, the lease.

Durations are written as strings ("30s") and held as float seconds; paths resolve against the config file's
folder (``DaemonConfig.resolved``). The profile's models are in ``config.profile``, the shared ones in ``config.base``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from hybridops_daemon.config.base import Duration, Name, PositiveDuration, SignalName, Strict

# Re-exported (the `as` form) for drivers/dns.py, which imports it from here until the drivers' rewrite lands.
from hybridops_daemon.config.base import SecretRef as SecretRef


class HttpProbeSource(Strict):
    """GET ``url`` every ``interval``: the signal is 1 when the status matches (and latency is in bounds), else 0."""

    type: Literal["http_probe"]
    name: str = Field(default="", description="default: http_probe:<signal>")
    signal: SignalName
    url: str
    interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 2.0
    expect_status: int = Field(default=200, ge=100, le=599)
    max_latency: PositiveDuration | None = None

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


class MqttSource(Strict):
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


class PrometheusSource(Strict):
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


class AlertmanagerSource(Strict):
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


class BgpSource(Strict):
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


class IpsecSource(Strict):
    type: Literal["ipsec"]
    name: str = "ipsec"
    vici: Path = Path("/var/run/charon.vici")
    interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 2.0
    tunnels: tuple[IpsecTunnel, ...] = Field(min_length=1)


class PeerSource(Strict):
    """Publishes this node's observation summary per lane on ``<prefix>/<lane>/<node>`` and reads the peer's."""

    type: Literal["peer"]
    name: str = "peer"
    broker: MqttBroker = MqttBroker()
    topic_prefix: str = "hybridops/peer"
    publish_interval: PositiveDuration = 1.0


Source = Annotated[
    HttpProbeSource | MqttSource | PrometheusSource | AlertmanagerSource | BgpSource | IpsecSource | PeerSource,
    Field(discriminator="type"),
]


class SandboxDriverConfig(Strict):
    """The embedded driver: a local JSON "world" file stands in for the outside world."""

    world: Path | None = Field(default=None, description="default: <state_dir>/world-<lane>.json")
    latency: Duration = 0.0


class HcloudDriverConfig(Strict):
    """Hetzner Cloud (floating IPs) through the official ``hcloud`` SDK."""

    endpoint: str = "https://api.hetzner.cloud/v1"
    token: SecretRef
    action_timeout: Duration = Field(default=25.0, description="keep below the step's timeout (30s by default)")
    poll_interval: Duration = 0.5
    request_timeout: Duration = 10.0


class PostgresSite(Strict):
    """One PostgreSQL server of a cluster: a libpq DSN without a password, and the password by reference."""

    dsn: str
    password: SecretRef | None = None


class PostgresDriverConfig(Strict):
    """``clusters[cluster][site]``: the servers that ``database/primary@v1`` can make the primary."""

    clusters: dict[str, dict[str, PostgresSite]] = Field(min_length=1)
    connect_timeout: Duration = 5.0
    promote_timeout: Duration = 60.0


class PowerDnsDriverConfig(Strict):
    api_url: str
    api_key: SecretRef
    server_id: str = "localhost"
    nameservers: tuple[str, ...] = Field(min_length=1, description="authoritative servers verify() resolves against, host:port")
    timeout: Duration = 5.0
    verify_settle: Duration = Field(default=0.0, description="verify() re-resolves until all nameservers agree, up to this long")


class Rfc2136DriverConfig(Strict):
    server: str
    port: int = Field(default=53, ge=1, le=65535)
    tsig_name: str | None = None
    tsig_secret: SecretRef | None = None
    tsig_algorithm: str = "hmac-sha256"
    nameservers: tuple[str, ...] = Field(default=(), description="for verify(); default: the server itself")
    timeout: Duration = 5.0
    verify_settle: Duration = Field(default=0.0, description="verify() re-resolves until all nameservers agree, up to this long")

    @model_validator(mode="after")
    def _tsig_complete(self) -> Rfc2136DriverConfig:
        if (self.tsig_name is None) != (self.tsig_secret is None):
            raise ValueError("tsig_name and tsig_secret go together")
        return self


class NetboxDriverConfig(Strict):
    url: str
    token: SecretRef
    timeout: Duration = 10.0


class GcpDriverConfig(Strict):
    """GCP Compute Engine instances through ``google-cloud-compute`` (REST transport)."""

    project: str
    zone: str
    endpoint: str | None = Field(default=None, description="API endpoint override (tests point it at a local fake)")
    credentials: SecretRef | None = Field(default=None, description="service-account JSON file; default: ADC")
    operation_timeout: Duration = 300.0
    request_timeout: Duration = Field(default=30.0, description="client-side limit of each API request")
    poll_interval: Duration = 1.0


class AnsibleDriverConfig(Strict):
    """Runs packs (playbooks) from ``packs_dir/<pack>/`` for the modules bound to them."""

    packs_dir: Path = Path("packs/ansible")
    packs: dict[str, str] = Field(default_factory=dict, description="module ref → pack name")
    playbook: str = "ansible-playbook"
    timeout: Duration = 600.0


class LaneDrivers(Strict):
    """Per lane, so each lane has its own targets and secrets: a drill never reaches prod's."""

    sandbox: SandboxDriverConfig = SandboxDriverConfig()
    hcloud: HcloudDriverConfig | None = None
    postgres: PostgresDriverConfig | None = None
    powerdns: PowerDnsDriverConfig | None = None
    rfc2136: Rfc2136DriverConfig | None = None
    netbox: NetboxDriverConfig | None = None
    gcp: GcpDriverConfig | None = None
    ansible: AnsibleDriverConfig | None = None


class LaneConfig(Strict):
    profile: Path
    drivers: LaneDrivers = LaneDrivers()


class ControlConfig(Strict):
    socket: Path | None = Field(default=None, description="default: <state_dir>/hyops.sock")
    group: str | None = Field(default=None, description="group owning the socket (mode 0660)")


class LocalLeaseConfig(Strict):
    """One node: an exclusive file lock held for the daemon's lifetime. Cannot keep two edges apart."""

    type: Literal["local"] = "local"
    path: Path | None = Field(default=None, description="default: <state_dir>/lease.lock")


class EtcdLeaseConfig(Strict):
    """The edge pair: per lane, a leader key in a three-member etcd bound to a lease this node keeps alive.

    A node stops acting when a refresh fails and at the latest ``ttl`` after its last successful one; a successor
    takes over once etcd expires the key (``ttl`` after the leader's last refresh) and it next campaigns."""

    type: Literal["etcd"]
    endpoints: tuple[str, ...] = Field(min_length=1, description="client URLs of the members, http://HOST:PORT")
    prefix: str = Field(default="/hybridops", pattern=r"^/[A-Za-z0-9_./-]*[^/]$", description="keys: <prefix>/lanes/<lane>/...")
    ttl: PositiveDuration = Field(default=5.0, description="lease TTL; etcd 3.4 raises TTLs under its minimum (about 2s)")
    op_timeout: PositiveDuration = Field(default=1.0, description="bound on every etcd call")
    campaign_every: PositiveDuration = Field(default=0.5, description="how often a follower looks for a free leader key")

    @field_validator("endpoints")
    @classmethod
    def _http_endpoints(cls, endpoints: tuple[str, ...]) -> tuple[str, ...]:
        for endpoint in endpoints:
            if not re.fullmatch(r"http://[^/:]+:\d+/?", endpoint):
                raise ValueError(f"{endpoint!r}: expected http://HOST:PORT (the aetcd client speaks plaintext gRPC only)")
        return endpoints

    @model_validator(mode="after")
    def _timeouts_fit_the_ttl(self) -> EtcdLeaseConfig:
        # A refresh is sent every ttl/3; one that takes longer than that could let the TTL run out unnoticed.
        if self.op_timeout * 3 > self.ttl:
            raise ValueError(f"op_timeout ({self.op_timeout:g}s) must be at most a third of the ttl ({self.ttl:g}s)")
        return self


LeaseConfig = Annotated[LocalLeaseConfig | EtcdLeaseConfig, Field(discriminator="type")]


class MetricsConfig(Strict):
    """The Prometheus exposition endpoint (``/metrics``)."""

    listen: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class RetentionConfig(Strict):
    """Journal retention: keep records newer than ``days`` and/or the journal under ``max_mb``. What is cut is
    summarised in a record so that ``journal verify`` still proves the chain from the cut onward."""

    days: float | None = Field(default=None, gt=0)
    max_mb: float | None = Field(default=None, gt=0)
    check_every: PositiveDuration = 3600.0


class DaemonConfig(Strict):
    node: Name
    peer: Name | None = None
    state_dir: Path
    journal: Path | None = Field(default=None, description="default: <state_dir>/journal.db")
    journal_key: SecretRef | None = Field(
        default=None, description="signs every journal record (HMAC-SHA256), by reference; `journal verify --key-file`"
    )
    tick: PositiveDuration = 1.0
    shutdown_grace: Duration = 10.0
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig | None = None
    retention: RetentionConfig | None = None
    lease: LeaseConfig = LocalLeaseConfig()
    sources: tuple[Source, ...] = ()
    lanes: dict[Name, LaneConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _sources_fit_together(self) -> DaemonConfig:
        names = [source.name for source in self.sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique (give each a `name:`); repeated: {', '.join(duplicates)}")
        if any(source.type == "peer" for source in self.sources) and self.peer is None:
            raise ValueError("a `peer` source needs `peer:` (the other edge's node name)")
        return self

    # Paths resolve against the config file's folder (done by the loader through `resolved`).
    def resolved(self, base: Path) -> DaemonConfig:
        def rel(path: Path) -> Path:
            return path if path.is_absolute() else (base / path)

        state = rel(self.state_dir)
        lanes = {
            name: lane.model_copy(
                update={
                    "profile": rel(lane.profile),
                    "drivers": lane.drivers.model_copy(
                        update={
                            "sandbox": lane.drivers.sandbox.model_copy(
                                update={
                                    "world": rel(lane.drivers.sandbox.world)
                                    if lane.drivers.sandbox.world
                                    else state / f"world-{name}.json"
                                }
                            ),
                            "ansible": lane.drivers.ansible.model_copy(update={"packs_dir": rel(lane.drivers.ansible.packs_dir)})
                            if lane.drivers.ansible
                            else None,
                        }
                    ),
                }
            )
            for name, lane in self.lanes.items()
        }
        return self.model_copy(
            update={
                "state_dir": state,
                "journal": rel(self.journal) if self.journal else state / "journal.db",
                "control": self.control.model_copy(
                    update={"socket": rel(self.control.socket) if self.control.socket else state / "hyops.sock"}
                ),
                "lease": self.lease.model_copy(update={"path": rel(self.lease.path) if self.lease.path else state / "lease.lock"})
                if isinstance(self.lease, LocalLeaseConfig)
                else self.lease,
                "lanes": lanes,
            }
        )

    @property
    def journal_path(self) -> Path:
        assert self.journal is not None, "call resolved() first"
        return self.journal

    @property
    def socket_path(self) -> Path:
        assert self.control.socket is not None, "call resolved() first"
        return self.control.socket
