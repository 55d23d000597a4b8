"""The module catalogue: each module's intent contract, as the typed inputs a step must give.

A module says WHAT the outside world must look like, never how to get there; a driver decides how.
Every inputs model is frozen with ``extra="forbid"`` (a typo is an error) and names, in ``identity``,
the input fields that identify the resource, so two steps touching the same thing share one
``resource_key`` whichever driver runs them. Values are normalised (IP spelling, DNS case) so that the
key and an equality check against the world do not depend on how an operator typed them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hybridops_daemon.drivers.base import Refused

NonEmpty = Annotated[str, Field(min_length=1)]


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def _ip_or_cidr(value: str) -> str:
    value = value.strip()
    try:
        return str(ipaddress.ip_interface(value)) if "/" in value else str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("must be an IP address or an address with prefix length (CIDR)") from None


def _dns_name(value: str) -> str:
    # DNS names are case-insensitive and the trailing dot is optional: one spelling per name.
    name = value.strip().lower().rstrip(".")
    if not name:
        raise ValueError("must be a DNS name (or '@' for the zone apex)")
    return name


IpAddress = Annotated[str, AfterValidator(_ip)]
IpOrCidr = Annotated[str, AfterValidator(_ip_or_cidr)]
DnsName = Annotated[str, AfterValidator(_dns_name)]


class ModuleInputs(BaseModel):
    """Base of every module's inputs; ``identity`` lists the fields that identify the resource."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    identity: ClassVar[tuple[str, ...]]


class ComputeCapacity(ModuleInputs):
    """``compute/capacity@v1``: the named capacity (standby VMs, burst pool) is running or stopped."""

    identity: ClassVar[tuple[str, ...]] = ("name",)
    name: NonEmpty
    state: Literal["running", "stopped"]


class ComputeGroupSize(ModuleInputs):
    """``compute/group-size@v1``: the managed group of instances ``group`` runs ``size`` of them (0: none); a burst
    lane's scale step (its size comes from the run: ``size: ${run.size}``). ``max_size``: the largest size the lane
    may ask for, which a preflight (knowing no run's size) checks the quota for; a size above it is refused."""

    identity: ClassVar[tuple[str, ...]] = ("group",)
    group: NonEmpty
    size: int = Field(ge=0, le=1000)
    max_size: int | None = Field(default=None, ge=0, le=1000, description="the largest size the lane may ask for; default: size")

    @model_validator(mode="after")
    def _size_within_max_size(self) -> ComputeGroupSize:
        if self.max_size is not None and self.size > self.max_size:
            raise ValueError("size must not exceed max_size")
        return self

    @property
    def ceiling(self) -> int:
        """The largest size this step stands for: ``max_size``, or ``size`` when it gives none."""
        return self.size if self.max_size is None else self.max_size


class DatabasePrimary(ModuleInputs):
    """``database/primary@v1``: in ``cluster``, ``primary`` (a site or node) is the one writable primary."""

    identity: ClassVar[tuple[str, ...]] = ("cluster",)
    cluster: NonEmpty
    primary: NonEmpty
    max_lag_bytes: int | None = Field(default=None, ge=0, description="refuse to promote a replica lagging more")
    force: StrictBool = Field(default=False, description="operator override of the lag and split-brain guards")


class FloatingIp(ModuleInputs):
    """``network/floating-ip@v1``: the floating IP ``ip`` is assigned to ``target`` (a server or edge)."""

    identity: ClassVar[tuple[str, ...]] = ("ip",)
    ip: IpAddress
    target: NonEmpty


class DnsRecord(ModuleInputs):
    """``dns/record@v1``: ``name`` in ``zone`` answers ``type`` with ``content`` at ``ttl`` seconds."""

    identity: ClassVar[tuple[str, ...]] = ("fqdn", "type")  # the zone too: "www" in two zones is two records
    zone: DnsName
    name: DnsName
    type: Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$"), AfterValidator(str.upper)] = "A"
    content: NonEmpty
    ttl: int = Field(default=60, ge=1, le=86400)

    @field_validator("content")
    @classmethod
    def _address_records_hold_addresses(cls, content: str, info: ValidationInfo) -> str:
        kind = info.data.get("type")  # absent when `type` itself failed validation
        wanted = {"A": ipaddress.IPv4Address, "AAAA": ipaddress.IPv6Address}.get(str(kind))
        if wanted is None:
            return content
        try:
            parsed = ipaddress.ip_address(content.strip())
        except ValueError:
            parsed = None
        if not isinstance(parsed, wanted):
            raise ValueError(f"an {kind} record's content must be an IPv{4 if kind == 'A' else 6} address")
        return str(parsed)

    @property
    def fqdn(self) -> str:
        if self.name == "@":
            return self.zone
        if self.name == self.zone or self.name.endswith("." + self.zone):
            return self.name
        return f"{self.name}.{self.zone}"


class IpamAddress(ModuleInputs):
    """``ipam/address@v1``: IPAM records ``address`` with ``status`` (e.g. active, reserved, deprecated)."""

    identity: ClassVar[tuple[str, ...]] = ("address",)
    address: IpOrCidr
    status: NonEmpty
    description: str = ""


class ActiveSite(ModuleInputs):
    """``service/active-site@v1``: the local ``service`` (configured under ``config_dir``) serves from ``site``."""

    identity: ClassVar[tuple[str, ...]] = ("config_dir",)
    service: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
    site: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    config_dir: Annotated[str, Field(pattern=r"^/")]


MODULES: Mapping[str, type[ModuleInputs]] = MappingProxyType(
    {
        "compute/capacity@v1": ComputeCapacity,
        "compute/group-size@v1": ComputeGroupSize,
        "database/primary@v1": DatabasePrimary,
        "network/floating-ip@v1": FloatingIp,
        "dns/record@v1": DnsRecord,
        "ipam/address@v1": IpamAddress,
        "service/active-site@v1": ActiveSite,
    }
)


def validate_inputs(module: str, inputs: Mapping[str, Any]) -> ModuleInputs:
    """The validated inputs of ``module``; Refused naming each bad field otherwise.

    The message names fields and what is wrong with them, never the values (inputs are not secret,
    but a message should not be the place where a value leaks either).
    """
    model = MODULES.get(module)
    if model is None:
        raise Refused(f"unknown module {module!r}; known: {', '.join(sorted(MODULES))}")
    try:
        return model.model_validate(dict(inputs))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(inputs)'}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise Refused(f"invalid inputs for {module}: {problems}") from None


def resource_key(module: str, inputs: ModuleInputs) -> str:
    """The resource a step touches, e.g. ``network/floating-ip@v1:203.0.113.10`` or ``dns/record@v1:www.example.com/A``."""
    model = MODULES.get(module)
    if model is None or not isinstance(inputs, model):
        raise TypeError(f"inputs of type {type(inputs).__name__} are not the inputs of module {module!r}")
    return f"{module}:{'/'.join(str(getattr(inputs, field)) for field in model.identity)}"


M = TypeVar("M", bound=ModuleInputs)


def inputs_of(driver: str, module: str, inputs: Mapping[str, Any], model: type[M]) -> M:
    """A step's validated inputs, for a driver that runs exactly ``model``'s module.

    Raises Refused when the step names another module or its inputs do not validate.
    """
    expected = next(ref for ref, cls in MODULES.items() if cls is model)
    if module != expected:
        raise Refused(f"the {driver} driver runs only {expected}, not {module!r}")
    validated = validate_inputs(module, inputs)
    assert isinstance(validated, model)
    return validated
