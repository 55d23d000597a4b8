"""Step inputs may reference what earlier steps published: ``${steps.<id>.<key>}``, ``${run.id}``, ``${run.lane}``, and
a scale run's ``${run.size}``.

A string that is exactly one reference takes the referenced value as it is (a number stays a number).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_REF = re.compile(r"\$\{([a-z][a-z0-9_.-]*)\}")


class UnresolvedReference(ValueError):
    pass


def render(value: Any, outputs: Mapping[str, Mapping[str, Any]], run: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _REF.fullmatch(value)
        if whole:
            return _lookup(whole.group(1), outputs, run)
        return _REF.sub(lambda m: str(_lookup(m.group(1), outputs, run)), value)
    if isinstance(value, Mapping):
        return {k: render(v, outputs, run) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [render(v, outputs, run) for v in value]
    return value


def _lookup(ref: str, outputs: Mapping[str, Mapping[str, Any]], run: Mapping[str, Any]) -> Any:
    parts = ref.split(".")
    if len(parts) == 2 and parts[0] == "run" and parts[1] in run:
        return run[parts[1]]
    if len(parts) == 3 and parts[0] == "steps":
        step = outputs.get(parts[1])
        if step is not None and parts[2] in step:
            return step[parts[2]]
        raise UnresolvedReference(f"${{{ref}}}: step {parts[1]!r} has published no output {parts[2]!r}")
    raise UnresolvedReference(f"${{{ref}}}: not a known reference (use steps.<id>.<key>, run.id, run.lane or run.size)")
