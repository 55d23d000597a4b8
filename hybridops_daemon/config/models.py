"""The two files an operator writes: the daemon config (one per node) and the profile (one per lane version).

Both are frozen pydantic models with ``extra="forbid"`` so a typo is an error, not a silently ignored key.
Durations are written as strings ("30s") and held as float seconds. Cross-references (a rule naming an
unknown signal, a step bound to a driver that cannot run its module) are checked by ``profile_problems``
after the structure validates, so that every problem is reported with its own key path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from hybridops_daemon.durations import DURATION_PATTERN, parse_duration

# The JSON schema must accept what operators write ("30s"), not only the float the model holds.
_DURATION_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": DURATION_PATTERN.pattern}]}
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA, mode="validation")]


def _named(pattern: str, hint: str) -> Callable[[str], str]:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(hint)
        return value

    return check


# Names checked by validators rather than Field(pattern=...), so an operator reads a hint, not a regex.
Name = Annotated[
    str,
    AfterValidator(_named(r"[a-z][a-z0-9_-]{0,62}", "must be a lowercase name like prod or floating-ip (a-z, 0-9, _ and -)")),
    WithJsonSchema({"type": "string", "pattern": r"^[a-z][a-z0-9_-]{0,62}$"}),
]
ModuleRef = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*/[a-z][a-z0-9_-]*@v[0-9]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------- profile


class SignalSpec(Strict):
    """A signal the profile reads. Older than ``max_age`` (or absent) it is UNKNOWN."""

    max_age: Duration
    description: str = ""


class Direction(StrEnum):
    BELOW = "below"  # breaching while value < trip, cleared once value >= clear
    ABOVE = "above"  # breaching while value > trip, cleared once value <= clear


class UnknownMeans(StrEnum):
    HOLD = "hold"  # UNKNOWN neither confirms nor clears the rule; it only blocks failback
    BREACH = "breach"  # UNKNOWN counts as breaching, timed by `for` alone (no samples to count)


class Rule(Strict):
    """A threshold with direction, confirmation time, consecutive count and hysteresis."""

    name: Name
    signal: str
    direction: Direction
    trip: float
    clear: float | None = Field(default=None, description="level at which a tripped rule clears; defaults to trip")
    for_: Duration = Field(default=0.0, alias="for", description="breach must last this long")
    consecutive: int = Field(default=1, ge=1, description="breaching samples in a row needed")
    unknown: UnknownMeans = UnknownMeans.HOLD

    @property
    def clear_level(self) -> float:
        return self.trip if self.clear is None else self.clear

    @model_validator(mode="after")
    def _hysteresis_points_the_right_way(self) -> Rule:
        if self.clear is None:
            return self
        if self.direction is Direction.BELOW and self.clear < self.trip:
            raise ValueError("clear must be >= trip for a 'below' rule (hysteresis band)")
        if self.direction is Direction.ABOVE and self.clear > self.trip:
            raise ValueError("clear must be <= trip for an 'above' rule (hysteresis band)")
        return self


class Corroboration(Strict):
    """Cut over only when ``min_rules`` of ``rules`` (default: all rules) are tripped."""

    min_rules: int = Field(default=1, ge=1)
    rules: tuple[str, ...] | None = None
    both_edges: bool = Field(default=False, description="a rule counts only when tripped on this edge and on the peer")


class FailbackPolicy(Strict):
    automatic: bool = False
    stable_for: Duration = 600.0


class ActionLimit(Strict):
    """At most ``max_actions`` automatic actions in any ``window``."""

    max_actions: int = Field(default=3, ge=1)
    window: Duration = 86400.0


class CostGuardrail(Strict):
    budget_usd_per_hour: float = Field(ge=0, description="an automatic cutover or a drill whose capacity costs more is refused")
    always_on_usd_per_hour: float | None = Field(
        default=None, ge=0, description="the baseline: an always-on cloud standby; default: the cutover chain's capacity, 24/7"
    )


class DrillPolicy(Strict):
    allowed: bool = True
    teardown_after: Duration = 900.0
    schedule: str | None = Field(
        default=None, description='cron expression (5 fields, UTC) for scheduled drills, e.g. "0 3 1 * *"'
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from hybridops_daemon.scheduler import validate_cron  # APScheduler is imported only when a schedule is set

            problem = validate_cron(value)
            if problem is not None:
                raise ValueError(problem)
        return value


class SecretRef(Strict):
    """Where a secret lives: an environment variable or a file. Never the secret itself."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _by_reference(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("secrets are given by reference, {env: VAR} or {file: path}, never inline")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference names exactly one of 'env' or 'file'")
        return self


class Step(Strict):
    """One module of a chain: the intent (module + inputs) and the driver bound to run it."""

    id: Name
    module: ModuleRef
    driver: Name = "sandbox"
    inputs: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, SecretRef] = Field(default_factory=dict)
    approval: bool = Field(default=False, description="wait for `hyopsctl approve RUN STEP`")
    timeout: Duration = 30.0
    retries: int = Field(default=2, ge=0, le=20)
    backoff: Duration = 1.0
    hourly_cost_usd: float = Field(default=0.0, ge=0, description="cloud capacity this step keeps running")
    expected_duration: Duration = Field(default=5.0, description="used by the simulator")


class Chains(Strict):
    cutover: tuple[Step, ...]
    failback: tuple[Step, ...]


class Profile(Strict):
    """Policy and defaults for one lane, versioned (``prod@v3``)."""

    name: Name
    version: int = Field(ge=1)
    description: str = ""
    signals: dict[str, SignalSpec] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    corroboration: Corroboration = Corroboration()
    cooldown: Duration = 300.0
    action_limit: ActionLimit = ActionLimit()
    failback: FailbackPolicy = FailbackPolicy()
    drill: DrillPolicy = DrillPolicy()
    approval_timeout: Duration = 3600.0
    cost: CostGuardrail | None = None
    chains: Chains

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def chain(self, which: Literal["cutover", "failback"]) -> tuple[Step, ...]:
        return self.chains.cutover if which == "cutover" else self.chains.failback

    def hourly_cost(self) -> float:
        """Cloud cost per hour while the cutover chain's capacity runs."""
        return sum(step.hourly_cost_usd for step in self.chains.cutover)


def profile_problems(profile: Profile, known_drivers: dict[str, frozenset[str]]) -> list[tuple[tuple[str | int, ...], str]]:
    """Cross-reference checks, as (key path, message). ``known_drivers`` maps driver → supported modules."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    names = [rule.name for rule in profile.rules]
    for i, rule in enumerate(profile.rules):
        if rule.signal not in profile.signals:
            problems.append((("rules", i, "signal"), f"unknown signal {rule.signal!r}; declare it under signals"))
        if names.count(rule.name) > 1 and names.index(rule.name) != i:
            problems.append((("rules", i, "name"), f"duplicate rule name {rule.name!r}"))
    chosen = profile.corroboration.rules
    for i, name in enumerate(chosen or ()):
        if name not in names:
            problems.append((("corroboration", "rules", i), f"unknown rule {name!r}"))
    pool = len(chosen) if chosen is not None else len(names)
    if profile.rules and profile.corroboration.min_rules > pool:
        problems.append(
            (("corroboration", "min_rules"), f"needs {profile.corroboration.min_rules} rules but only {pool} can count")
        )
    for which in ("cutover", "failback"):
        ids: set[str] = set()
        for i, step in enumerate(profile.chain(which)):
            where: tuple[str | int, ...] = ("chains", which, i)
            if step.id in ids:
                problems.append(((*where, "id"), f"duplicate step id {step.id!r}"))
            ids.add(step.id)
            supported = known_drivers.get(step.driver)
            if supported is None:
                problems.append(
                    ((*where, "driver"), f"unknown driver {step.driver!r}; known: {', '.join(sorted(known_drivers))}")
                )
            elif step.module not in supported:
                problems.append(((*where, "module"), f"driver {step.driver!r} cannot run {step.module!r}"))
    return problems


# --------------------------------------------------------------------------------------------- daemon config


class HttpProbeSource(Strict):
    """GET ``url`` every ``interval``: the signal is 1 when the status matches (and latency is in bounds), else 0."""

    type: Literal["http_probe"]
    name: str = Field(default="", description="default: http_probe:<signal>")
    signal: SignalName
    url: str
    interval: Duration = 1.0
    timeout: Duration = 2.0
    expect_status: int = Field(default=200, ge=100, le=599)
    max_latency: Duration | None = None

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


SignalName = Annotated[
    str,
    AfterValidator(_named(r"[a-z][a-z0-9_]*", "must be a lowercase signal name like primary_http (a-z, 0-9 and _)")),
    WithJsonSchema({"type": "string", "pattern": r"^[a-z][a-z0-9_]*$"}),
]


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
    connect_timeout: Duration = 5.0
    reconnect_min: Duration = 0.5
    reconnect_max: Duration = 30.0


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
    interval: Duration = 5.0
    timeout: Duration = 3.0
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
    interval: Duration = 1.0
    timeout: Duration = 2.0
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
    interval: Duration = 1.0
    timeout: Duration = 2.0
    tunnels: tuple[IpsecTunnel, ...] = Field(min_length=1)


class PeerSource(Strict):
    """Publishes this node's observation summary per lane on ``<prefix>/<lane>/<node>`` and reads the peer's."""

    type: Literal["peer"]
    name: str = "peer"
    broker: MqttBroker = MqttBroker()
    topic_prefix: str = "hybridops/peer"
    publish_interval: Duration = 1.0


Source = Annotated[
    HttpProbeSource | MqttSource | PrometheusSource | AlertmanagerSource | BgpSource | IpsecSource | PeerSource,
    Field(discriminator="type"),
]


# Each driver declares its config model (hybridops_daemon/drivers/declarations/); the lane's drivers section is
# built from those declarations. Imported here, below Strict, Duration and SecretRef, because the drivers' config
# models are built on them (and hybridops_daemon/drivers/__init__.py imports this module first, so that either
# side may be imported first).
from hybridops_daemon.drivers.declarations import LaneDrivers as LaneDrivers  # noqa: E402


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
    ttl: Duration = Field(default=5.0, description="lease TTL; etcd 3.4 raises TTLs under its minimum (about 2s)")
    op_timeout: Duration = Field(default=1.0, description="bound on every etcd call")
    campaign_every: Duration = Field(default=0.5, description="how often a follower looks for a free leader key")

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
    check_every: Duration = 3600.0


class DaemonConfig(Strict):
    node: Name
    peer: Name | None = None
    state_dir: Path
    journal: Path | None = Field(default=None, description="default: <state_dir>/journal.db")
    tick: Duration = 1.0
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
                    "drivers": lane.drivers.resolved(base, state, name),
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
