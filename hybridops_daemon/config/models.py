"""The daemon config (one per node): its signal sources, each lane's profile and drivers, the lease.

Durations are written as strings ("30s") and held as float seconds; paths resolve against the config file's
folder (``DaemonConfig.resolved``). The profile's models are in ``config.profile``, the sources' in
``config.sources``, the shared ones in ``config.base``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from hybridops_daemon.config.base import Duration, Name, PositiveDuration, SecretRef, Strict
from hybridops_daemon.config.sources import Source

# Each driver declares its config model (hybridops_daemon/drivers/declarations/, on config.base alone); the lane's
# drivers section is built from those declarations.
from hybridops_daemon.drivers.declarations import LaneDrivers as LaneDrivers


class ReadinessConfig(Strict):
    """How often the lane's cutover and failback preflights run (jittered), and each step's time budget."""

    enabled: bool = True
    every: PositiveDuration = 300.0
    timeout: PositiveDuration = 30.0


class LaneConfig(Strict):
    profile: Path
    drivers: LaneDrivers = LaneDrivers()
    readiness: ReadinessConfig = ReadinessConfig()


class ControlConfig(Strict):
    socket: Path | None = Field(default=None, description="default: <state_dir>/hyops.sock")
    group: str | None = Field(default=None, description="group owning the socket (mode 0660)")


class LocalLeaseConfig(Strict):
    """One node: an exclusive file lock held for the daemon's lifetime. Cannot keep two edges apart."""

    type: Literal["local"] = "local"
    path: Path | None = Field(default=None, description="default: <state_dir>/lease.lock")


class EtcdTlsConfig(Strict):
    """TLS to the etcd members (``https://`` endpoints). With ``cert`` and ``key`` the client presents a certificate
    (mutual TLS): a member run with ``--client-cert-auth`` takes the etcd user from its CN, no password involved."""

    ca: Path = Field(description="CA bundle that signed the members' certificates (PEM)")
    cert: Path | None = Field(default=None, description="client certificate (PEM), whose CN is this node's etcd user")
    key: SecretRef | None = Field(default=None, description="the client certificate's private key (PEM), by reference")
    server_name: str | None = Field(
        default=None, min_length=1, description="name to verify in the members' certificates instead of each endpoint's host"
    )

    @model_validator(mode="after")
    def _cert_with_key(self) -> EtcdTlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate: give both `cert` and `key`")
        return self


class EtcdAuthConfig(Strict):
    """etcd user and password: the client authenticates for a token and authenticates again when etcd says the token
    is no longer valid (simple tokens expire after ``--auth-token-ttl`` unused)."""

    user: str = Field(min_length=1)
    password: SecretRef


class EtcdLeaseConfig(Strict):
    """The edge pair: per lane, a leader key in a three-member etcd bound to a lease this node keeps alive.

    A node stops acting when a refresh fails and at the latest ``ttl`` after its last successful one; a successor
    takes over once etcd expires the key (``ttl`` after the leader's last refresh) and it next campaigns."""

    type: Literal["etcd"]
    endpoints: tuple[str, ...] = Field(
        min_length=1, description="client URLs of the members, all https://HOST:PORT (with tls) or all http://HOST:PORT"
    )
    prefix: str = Field(default="/hybridops", pattern=r"^/[A-Za-z0-9_./-]*[^/]$", description="keys: <prefix>/lanes/<lane>/...")
    ttl: PositiveDuration = Field(default=5.0, description="lease TTL; etcd 3.4 raises TTLs under its minimum (about 2s)")
    op_timeout: PositiveDuration = Field(default=1.0, description="bound on every etcd call")
    campaign_every: PositiveDuration = Field(default=0.5, description="how often a follower looks for a free leader key")
    tls: EtcdTlsConfig | None = Field(default=None, description="required with https:// endpoints")
    auth: EtcdAuthConfig | None = Field(default=None, description="user and password (else: the client certificate's CN)")

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, endpoints: tuple[str, ...]) -> tuple[str, ...]:
        for endpoint in endpoints:
            if not re.fullmatch(r"https?://[^/:]+:\d+/?", endpoint):
                raise ValueError(f"{endpoint!r}: expected https://HOST:PORT (or http://HOST:PORT, plaintext)")
        if len({endpoint.split(":", 1)[0] for endpoint in endpoints}) > 1:
            raise ValueError("mix of http:// and https:// endpoints: every member is reached the same way")
        return endpoints

    @property
    def plaintext(self) -> bool:
        return self.endpoints[0].startswith("http://")

    @model_validator(mode="after")
    def _fits_together(self) -> EtcdLeaseConfig:
        # A refresh is sent every ttl/3; one that takes longer than that could let the TTL run out unnoticed.
        if self.op_timeout * 3 > self.ttl:
            raise ValueError(f"op_timeout ({self.op_timeout:g}s) must be at most a third of the ttl ({self.ttl:g}s)")
        if self.plaintext and self.tls is not None:
            raise ValueError("`tls` is given but the endpoints are http://: use https:// endpoints")
        if not self.plaintext and self.tls is None:
            raise ValueError("https:// endpoints need `tls` (at least `ca`, the CA that signed the members' certificates)")
        return self


LeaseConfig = Annotated[LocalLeaseConfig | EtcdLeaseConfig, Field(discriminator="type")]


class MetricsConfig(Strict):
    """The Prometheus exposition endpoint (``/metrics``)."""

    listen: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)


class WebConfig(Strict):
    """The read-only journal view in a browser (``hybridops_daemon/web/``). Loopback by default: for remote access
    put a reverse proxy in front and set ``token`` (every request must carry ``Authorization: Bearer <token>``)."""

    listen: str = "127.0.0.1"
    port: int = Field(default=9465, ge=0, le=65535)
    token: SecretRef | None = Field(default=None, description="bearer token every request must carry, by reference")
    socket: Path | None = Field(
        default=None, description="listen on this Unix socket instead (mode 0660, the control socket's group)"
    )


class AlertmanagerNotifyConfig(Strict):
    """Direct notification (``hybridops_daemon/notify/``): the daemon posts its own alerts to Alertmanager's v2 API,
    so a page waits for no scrape and no Prometheus. Every URL gets every alert (an Alertmanager cluster deduplicates
    them, as it does Prometheus's)."""

    urls: tuple[str, ...] = Field(min_length=1, max_length=8, description="Alertmanager base URLs, http(s)://HOST:PORT[/PATH]")
    timeout: PositiveDuration = Field(default=5.0, description="bound on each POST")
    resend_every: PositiveDuration = Field(default=60.0, description="active alerts are sent again this often")
    resolve_after: PositiveDuration = Field(
        default=300.0, description="an active alert's endsAt lies this far ahead: Alertmanager resolves it if no edge re-sends it"
    )
    queue: int = Field(default=1000, ge=1, le=100_000, description="notices kept while no Alertmanager answers; oldest go first")
    link: str | None = Field(
        default=None, description="base URL of run pages in alerts (e.g. a reverse proxy); default: the web view's URL"
    )
    token: SecretRef | None = Field(default=None, description="bearer token for an Alertmanager behind a proxy, by reference")

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
                raise ValueError(f"{url!r}: expected http(s)://HOST:PORT[/PATH]")
        return urls

    @field_validator("link")
    @classmethod
    def _http_link(cls, link: str | None) -> str | None:
        if link is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", link):
            raise ValueError(f"{link!r}: expected http(s)://HOST[:PORT][/PATH]")
        return link

    @model_validator(mode="after")
    def _resend_before_resolve(self) -> AlertmanagerNotifyConfig:
        # Two re-sends may be lost before Alertmanager resolves an alert that is still active.
        if self.resolve_after < 2 * self.resend_every:
            raise ValueError(
                f"resolve_after ({self.resolve_after:g}s) must be at least twice resend_every ({self.resend_every:g}s)"
            )
        return self


class NotifyConfig(Strict):
    alertmanager: AlertmanagerNotifyConfig | None = None


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
    journal_verify_every: PositiveDuration = Field(
        default=3600.0, description="how often the daemon verifies its own journal (hybridops_journal_verify_ok)"
    )
    tick: PositiveDuration = 1.0
    shutdown_grace: Duration = 10.0
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig | None = None
    web: WebConfig | None = None
    notify: NotifyConfig = NotifyConfig()
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
        needing = next((source.type for source in self.sources if source.needs_peer), None)
        if needing is not None and self.peer is None:
            raise ValueError(f"a `{needing}` source needs `peer:` (the other edge's node name)")
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
                "lease": self._resolved_lease(rel, state),
                "lanes": lanes,
                "web": self.web.model_copy(update={"socket": rel(self.web.socket)})
                if self.web is not None and self.web.socket is not None
                else self.web,
            }
        )

    def _resolved_lease(self, rel: Callable[[Path], Path], state: Path) -> LeaseConfig:
        lease = self.lease
        if isinstance(lease, LocalLeaseConfig):
            return lease.model_copy(update={"path": rel(lease.path) if lease.path else state / "lease.lock"})
        if lease.tls is not None:  # the key is a secret reference: it resolves like every other one
            tls = lease.tls
            return lease.model_copy(
                update={"tls": tls.model_copy(update={"ca": rel(tls.ca), "cert": rel(tls.cert) if tls.cert else None})}
            )
        return lease

    @property
    def journal_path(self) -> Path:
        assert self.journal is not None, "call resolved() first"
        return self.journal

    @property
    def socket_path(self) -> Path:
        assert self.control.socket is not None, "call resolved() first"
        return self.control.socket
