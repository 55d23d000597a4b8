"""``--sweep KEY=v1,v2,...``: the grid of profile variants a team compares to choose its thresholds from evidence.

KEY is a dotted path into the profile as written in its YAML file: ``cooldown``, ``rules.0.for``,
``failback.stable_for``. A list item may be named by its index or by its ``name``/``id`` (``rules.primary_down.for``,
``chains.cutover.capacity.hourly_cost_usd``). Values are YAML scalars (``5s``, ``0.5``, ``true``, ``hold``); a comma
always separates two values. Several ``--sweep`` options make the cartesian product, in the order given. Every
variant is validated as a whole profile (structure and cross-references) before anything runs.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from hybridops_daemon.config.loader import render_path
from hybridops_daemon.config.profile import Profile, profile_problems


class SweepError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Axis:
    key: str
    values: tuple[str, ...]  # as written: they label the variants

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.key.split("."))


def parse_axis(spec: str) -> Axis:
    key, sep, values = spec.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SweepError(f"--sweep {spec!r}: expected KEY=VALUE1,VALUE2,... with KEY a dotted path into the profile")
    if any(not part for part in key.split(".")):
        raise SweepError(f"--sweep {spec!r}: {key!r} has an empty path element")
    items = tuple(value.strip() for value in values.split(","))
    if any(not item for item in items):
        raise SweepError(f"--sweep {spec!r}: empty value (values are separated by single commas)")
    return Axis(key, items)


def parse_axes(specs: Sequence[str]) -> list[Axis]:
    axes = [parse_axis(spec) for spec in specs]
    keys = [axis.key for axis in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise SweepError(f"--sweep {key}: given twice; list every value in one option")
    return axes


def _scalar(axis: Axis, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise SweepError(f"--sweep {axis.key}={text}: not a YAML value") from None


def _index(items: list[Any], element: str, where: str) -> int:
    if element.isdigit():
        index = int(element)
        if index >= len(items):
            raise SweepError(f"{where} has no item {index} (it has {len(items)})")
        return index
    for index, item in enumerate(items):
        if isinstance(item, dict) and element in (item.get("name"), item.get("id")):
            return index
    raise SweepError(f"{where} has no item named {element!r}")


def _assign(data: dict[str, Any], axis: Axis, value: Any) -> None:
    """Set ``value`` at the axis's path; missing mappings on the way are created (a key the file leaves at its default)."""
    node: Any = data
    path = axis.path
    for depth, element in enumerate(path):
        where = ".".join(path[:depth]) or "the profile"
        last = depth == len(path) - 1
        if isinstance(node, list):
            index = _index(node, element, where)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[element] = value
            else:
                node = node.setdefault(element, {})
        else:
            raise SweepError(f"--sweep {axis.key}: {where} is a value, not a mapping or a list")


def _message(error: ErrorDetails) -> str:
    """Worded as check-config words it."""
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return error["msg"].removeprefix("Value error, ").replace("Input should be", "must be", 1)


def _validated(data: dict[str, Any], label: str, known_drivers: Mapping[str, frozenset[str]]) -> Profile:
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{render_path(tuple(error['loc']))}: {_message(error)}" for error in exc.errors()]
        raise SweepError(f"variant {label}: " + "; ".join(problems)) from None
    cross = profile_problems(profile, dict(known_drivers))
    if cross:
        raise SweepError(f"variant {label}: " + "; ".join(f"{render_path(where)}: {message}" for where, message in cross))
    return profile


def variants(
    data: Mapping[str, Any], axes: Sequence[Axis], known_drivers: Mapping[str, frozenset[str]]
) -> list[tuple[dict[str, str], Profile]]:
    """Every combination of the axes' values applied to the profile ``data``, each validated. Raises SweepError."""
    out: list[tuple[dict[str, str], Profile]] = []
    for combination in itertools.product(*(axis.values for axis in axes)):
        variant = copy.deepcopy(dict(data))
        label: dict[str, str] = {}
        for axis, text in zip(axes, combination, strict=True):
            _assign(variant, axis, _scalar(axis, text))
            label[axis.key] = text
        out.append((label, _validated(variant, " ".join(f"{k}={v}" for k, v in label.items()), known_drivers)))
    return out
