"""What a driver declares once: its name, the modules it can run, its config model and how to build it.

The registry (``DRIVER_MODULES``, ``build_drivers``) and the config schema (``LaneDrivers``, the
``lanes.<lane>.drivers`` section) are both derived from the list in ``drivers/declarations/``, so check-config,
``hyops-daemon schema`` and the daemon see exactly the declared drivers. A declaration and its config model
live in a light module (no SDK import); its factory imports the driver itself, so only a lane that configures
a driver loads that driver's SDK.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Self, TypeVar

from pydantic import create_model

from hybridops_daemon.config.base import Strict
from hybridops_daemon.drivers.base import Driver, Refused, StepContext
from hybridops_daemon.drivers.modules import MODULES, validate_inputs

PACK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a pack is a folder name, never a path out of packs_dir


def bound_pack(driver: str, packs: Mapping[str, str], module: str) -> str:
    """The pack a pack driver (ansible, terraform) runs for ``module``. Raises ValueError, in words, when none is
    bound or the bound name is not a plain folder name; each driver raises it as its own NotFound."""
    pack = packs.get(module)
    if pack is None:
        known = ", ".join(sorted(packs)) or "none"
        article = "an" if driver[0] in "aeiou" else "a"
        raise ValueError(f"{driver}: module {module} is not bound to {article} {driver} pack (bound: {known})")
    if not PACK_NAME.fullmatch(pack):
        raise ValueError(f"{driver}: pack name {pack!r} for {module} is not a plain folder name")
    return pack


VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # a variable name both Ansible and Terraform accept


def pack_inputs(driver: str, step: StepContext, check_name: Callable[[str], None] = lambda _name: None) -> dict[str, Any]:
    """A pack step's inputs as the pack's variables: validated and normalised by the catalogue's model when the module
    has one (a lane-local module's pack validates its own); each a variable name (then ``check_name``, the driver's
    own rule); JSON-able. Raises Refused, naming the driver, the module and the input."""
    if step.module in MODULES:
        inputs: dict[str, Any] = validate_inputs(step.module, step.inputs).model_dump(mode="json")
    else:
        inputs = dict(step.inputs)
    for name in inputs:
        if not isinstance(name, str) or not VAR_NAME.fullmatch(name):
            raise Refused(f"{driver}: input {name!r} of {step.module} is not a valid variable name")
        check_name(name)
    try:
        json.dumps(inputs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise Refused(f"{driver}: inputs of {step.module} are not JSON-able: {type(exc).__name__}") from None
    return inputs


def under(base: Path, path: Path) -> Path:
    """``path`` as written in the config file: relative to ``base``, the file's folder, unless absolute."""
    return path if path.is_absolute() else base / path


class DriverConfig(Strict):
    """Base of every driver's config model: frozen, unknown keys are errors."""

    def resolved(self, base: Path, state_dir: Path, lane: str) -> Self:
        """The config with its relative paths resolved against ``base`` (the config file's folder) and its
        defaults that depend on the node (``state_dir``) or the lane filled in. Most drivers hold no path."""
        return self

    def request_bound(self) -> tuple[str, float] | None:
        """(key, seconds): the deadline of every request the driver sends, which is also its connections'
        TCP_USER_TIMEOUT (drivers/sockets.py); None for a driver that opens no connection of its own (the sandbox;
        the pack drivers, whose tools open theirs)."""
        return None

    def unbound(self, module: str) -> tuple[tuple[str, ...], str] | None:
        """Why this lane's configuration of the driver cannot run ``module`` although the driver supports it, as
        (key path under the driver's section, message); None when it can. Most drivers run all they declare."""
        return None


C = TypeVar("C", bound=DriverConfig)


@dataclass(frozen=True, slots=True)
class DriverDeclaration(Generic[C]):
    """One driver, as the registry and the config schema know it.

    ``modules``: what check-config accepts a step to bind to this driver without importing it. ``config``: the
    model of ``lanes.<lane>.drivers.<name>``. ``build(lane, config)``: the lane's driver instance (imports the
    driver module, and with it the SDK). ``always``: configured in every lane, with the model's defaults when the
    lane says nothing (the embedded sandbox); otherwise a lane has the driver only when it configures it.
    """

    name: str
    modules: frozenset[str]
    config: type[C]
    build: Callable[[str, C], Driver]
    always: bool = False


class LaneDriversBase(Strict):
    """What every lane's drivers section offers, whichever drivers are declared (its fields are the drivers)."""

    def configured(self) -> dict[str, DriverConfig]:
        """Each driver this lane has, by name."""
        found = {name: getattr(self, name) for name in type(self).model_fields}
        return {name: config for name, config in found.items() if isinstance(config, DriverConfig)}

    def resolved(self, base: Path, state_dir: Path, lane: str) -> Self:
        """Every configured driver's config with its paths resolved (see ``DriverConfig.resolved``)."""
        return self.model_copy(
            update={name: config.resolved(base, state_dir, lane) for name, config in self.configured().items()}
        )


def lane_drivers_model(declarations: tuple[DriverDeclaration[Any], ...]) -> type[LaneDriversBase]:
    """The model of ``lanes.<lane>.drivers``: one field per declared driver, nothing else."""
    fields: Mapping[str, Any] = {
        declared.name: (declared.config, declared.config()) if declared.always else (declared.config | None, None)
        for declared in declarations
    }
    return create_model(
        "LaneDrivers",
        __base__=LaneDriversBase,
        __doc__="Per lane, so each lane has its own targets and secrets: a drill never reaches prod's.",
        __module__=__name__,
        **fields,
    )
