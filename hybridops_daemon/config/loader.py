"""Load the daemon config and profiles from YAML, reporting every problem as ``file:line key.path: message``.

The YAML is composed once into a node tree: the tree gives each key path its line (and exposes duplicate keys,
which PyYAML would otherwise silently resolve to the last one), then the same tree is constructed into data for
pydantic. Pydantic's error locations are mapped back onto the file's key paths and lines.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, TypeGuard, TypeVar, Union, get_args, get_origin

import yaml
import yaml.composer
import yaml.constructor
import yaml.reader
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from hybridops_daemon import limits
from hybridops_daemon.config.models import DaemonConfig, EtcdLeaseConfig, LaneDrivers
from hybridops_daemon.config.profile import Profile, profile_problems
from hybridops_daemon.config.sources import PeerSource

KeyPath = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MESSAGES = {
    "missing": "required key is missing",
    "model_type": "must be a mapping (key: value)",
    "model_attributes_type": "must be a mapping (key: value)",
    "dict_type": "must be a mapping (key: value)",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
}


@dataclass(frozen=True)
class ConfigError:
    file: Path
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = _display(self.file) if self.line is None else f"{_display(self.file)}:{self.line}"
        text = f"{where} {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        # YAML's "\ud800" is a lone surrogate, which print() cannot encode: a profile path naming one was a traceback
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ConfigInvalid(Exception):
    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(error) for error in errors))
        self.errors = errors


def load_profile(path: Path, known_drivers: Mapping[str, frozenset[str]]) -> Profile:
    """Validate a profile: structure first, then (if that holds) its cross-references. Raises ConfigInvalid."""
    profile, errors = _check_profile(path, known_drivers)
    if profile is None or errors:
        raise ConfigInvalid(errors)
    return profile


def load_daemon_config(path: Path) -> DaemonConfig:
    """Validate a daemon config; relative paths in it resolve against the config file's folder."""
    config, _, errors = _check_daemon_config(path)
    if config is None or errors:
        raise ConfigInvalid(errors)
    return config


def load_model(path: Path, model: type[M]) -> M:
    """Validate a YAML file of ours that is neither a daemon config nor a profile (``history --queries``), with the
    bounds and the ``file:line key: message`` errors of check-config. Raises ConfigInvalid."""
    parsed = _parse(path)
    loaded = _validate(model, parsed)
    if loaded is None or parsed.errors:
        raise ConfigInvalid(_by_line(parsed.errors))
    return loaded


def check_config(
    path: Path, known_drivers: Mapping[str, frozenset[str]]
) -> tuple[DaemonConfig | None, dict[str, Profile], list[ConfigError]]:
    """Validate the daemon config and every lane's profile, collecting the errors of all files.

    Returns the resolved config (None if invalid), the profiles that loaded (by lane) and every error.
    """
    config, parsed, errors = _check_daemon_config(path)
    lanes = {name: lane.profile for name, lane in config.lanes.items()} if config else _raw_lane_profiles(parsed)
    unreadable = {lane: problem for lane, profile_path in lanes.items() if (problem := _not_a_file(profile_path))}
    found = {lane: profile_path for lane, profile_path in lanes.items() if lane not in unreadable}
    missing = [
        parsed.error(("lanes", lane, "profile"), f"profile {problem}: {_display(lanes[lane])}")
        for lane, problem in unreadable.items()
    ]
    errors = _by_line(errors + missing)  # the daemon config's errors first, then each profile's
    checked: dict[Path, Profile | None] = {}  # lanes sharing a profile file report its errors once
    profiles: dict[str, Profile] = {}
    for lane, profile_path in found.items():
        if profile_path not in checked:
            profile, profile_errors = _check_profile(profile_path, known_drivers)
            checked[profile_path] = None if profile_errors else profile
            errors.extend(profile_errors)
        if (loaded := checked[profile_path]) is not None:
            profiles[lane] = loaded
            if config is not None:
                errors.extend(_unbound_drivers(parsed, lane, config.lanes[lane].drivers, loaded))
                errors.extend(_borrowed_profile(parsed, lane, config, loaded))
    if config is not None:
        errors.extend(_yields_to(parsed, config, profiles))
    return config, profiles, errors


def _yields_to(parsed: _Parsed, config: DaemonConfig, profiles: Mapping[str, Profile]) -> list[ConfigError]:
    """A burst lane yields to DR lanes of this daemon: a name that is no lane here, or a burst lane, never cuts over,
    so the scale-out would never wait for it."""
    errors = []
    for lane, profile in profiles.items():
        for name in profile.burst.yields_to if profile.burst is not None else ():
            other = profiles.get(name)
            if name not in config.lanes:
                what = f"no lane of this daemon (lanes: {', '.join(config.lanes)})"
            elif other is not None and other.burst is not None:
                what = "a burst lane; only a DR lane cuts over"
            else:
                continue  # a DR lane (or one whose profile failed to load, which says so itself)
            message = f"profile {profile.ref} burst.yields_to names {name!r}: {what}"
            errors.append(parsed.error(("lanes", lane, "profile"), message))
    return errors


def warnings(config: DaemonConfig) -> list[str]:
    """What check-config reports without refusing: configurations that run, but weaken what the lease promises (local
    leadership with a peer, an unauthenticated peer link, plaintext etcd, a driver deadline over the ttl).

    A driver whose request deadline (also its connections' TCP_USER_TIMEOUT) is not below the etcd lease's ttl can
    have a request land after this node's leadership ended. A warning, not an error: the fencing check before
    every step, the stamps and the targets' conditional writes still hold, and the drivers' defaults (hcloud 10s,
    gcp 30s) predate the bound, so refusing would stop configurations that run today."""
    found = []
    if config.peer is not None and config.lease.type == "local":
        found.append(
            f"lease.type is 'local' but a peer ({config.peer}) is configured: "
            "two nodes with local leadership cannot prevent split brain"
        )
    for source in config.sources:
        if isinstance(source, PeerSource) and source.auth is None:
            found.append(
                f"source {source.name!r} has no auth: peer messages are not authenticated, so anyone "
                "who may publish on the broker can speak for the peer (set auth.key, the same on both edges)"
            )
    if isinstance(config.lease, EtcdLeaseConfig) and config.lease.plaintext:
        found.append(
            f"etcd endpoints are http:// ({', '.join(config.lease.endpoints)}): leadership and fencing "
            "travel unencrypted and unauthenticated"
            + (", the etcd password too" if config.lease.auth is not None else "")
            + "; use https:// with lease.tls (client certificates) across any link you do not own"
        )
    if isinstance(config.lease, EtcdLeaseConfig):
        ttl = config.lease.ttl
        for lane, settings in config.lanes.items():
            for name, driver in settings.drivers.configured().items():
                bound = driver.request_bound()
                if bound is not None and bound[1] >= ttl:
                    key, seconds = bound
                    found.append(
                        f"lanes.{lane}.drivers.{name}.{key} ({seconds:g}s) is not below lease.ttl ({ttl:g}s): "
                        "a request this node sent as leader could land after its leadership ended"
                    )
    return found


def _borrowed_profile(parsed: _Parsed, lane: str, config: DaemonConfig, profile: Profile) -> list[ConfigError]:
    """A lane must not run a profile written for another of this node's lanes: a drill lane given prod's profile would
    drill with prod's chain, thresholds and guardrails (its targets stay its own, but nothing else says drill)."""
    if profile.name == lane or profile.name not in config.lanes:
        return []
    message = f"profile {profile.ref} is written for lane {profile.name!r}; lane {lane!r} needs its own (name: {lane})"
    return [parsed.error(("lanes", lane, "profile"), message)]


def _unbound_drivers(parsed: _Parsed, lane: str, drivers: LaneDrivers, profile: Profile) -> list[ConfigError]:
    """A step needs its driver configured in the lane that runs it (targets and secrets are per lane)."""
    errors = []
    configured = drivers.configured()
    for which in ("cutover", "failback", "scale"):
        for step in profile.chain(which):
            config = configured.get(step.driver)
            if config is None:
                message = f"profile {profile.ref} step {which}.{step.id} uses driver {step.driver!r}, not configured here"
                errors.append(parsed.error(("lanes", lane, "drivers"), message))
            elif (unbound := config.unbound(step.module)) is not None:
                key, why = unbound
                message = f"profile {profile.ref} step {which}.{step.id}: {why}"
                errors.append(parsed.error(("lanes", lane, "drivers", step.driver, *key), message))
    return errors


def json_schemas() -> dict[str, Any]:
    """JSON schemas (by alias, as operators write the files) for editors and linters."""
    return {
        "daemon_config": DaemonConfig.model_json_schema(by_alias=True),
        "profile": Profile.model_json_schema(by_alias=True),
    }


# --------------------------------------------------------------------------------------------- parsing


@dataclass
class _Parsed:
    file: Path
    data: Any = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    errors: list[ConfigError] = field(default_factory=list)
    nodes: int = 0  # visited by _index, aliases expanded

    def error(self, path: KeyPath, message: str) -> ConfigError:
        return ConfigError(self.file, self.line_of(path), render_path(path), message)

    def line_of(self, path: KeyPath) -> int | None:
        """Line of the deepest prefix of ``path`` present in the file (a missing key points at its parent)."""
        prefix: KeyPath = ()
        line = self.lines.get(prefix)
        for element in path:
            # Mapping keys are indexed as written; pydantic reports a YAML `1:` key as the int 1.
            candidates = [(*prefix, element), (*prefix, str(element))]
            match = next((candidate for candidate in candidates if candidate in self.lines), None)
            if match is None:
                break
            prefix, line = match, self.lines[match]
        return line


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a config file (a device like /dev/zero would be read forever), or None.

    By stat, not Path.is_file(): that raises for a name too long or a folder it may not search."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in the name
        return "file not found"
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    return None if stat.S_ISREG(mode) else "is not a regular file (a device or a pipe?)"


def _parse(file: Path) -> _Parsed:
    parsed = _Parsed(file)
    if problem := _not_a_file(file):
        parsed.errors.append(ConfigError(file, None, "", problem))
        return parsed
    try:
        with file.open("rb") as handle:
            raw = handle.read(limits.MAX_CONFIG_BYTES + 1)  # never more, whatever the file is
        if len(raw) > limits.MAX_CONFIG_BYTES:
            raise limits.InputRejected("file", "size in bytes", limits.MAX_CONFIG_BYTES)
        text = raw.decode("utf-8")
    except FileNotFoundError:
        parsed.errors.append(ConfigError(file, None, "", "file not found"))
        return parsed
    except limits.InputRejected as exc:
        parsed.errors.append(ConfigError(file, None, "", str(exc)))
        return parsed
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        parsed.errors.append(ConfigError(file, None, "", f"cannot read file: {reason}"))
        return parsed
    try:
        loader = _BoundedLoader(text)  # refuses control characters (NUL, ...) here, before parsing a line
    except yaml.reader.ReaderError as exc:  # its text would name "<unicode string>" and an offset, not a line
        line = text.count("\n", 0, exc.position) + 1
        message = f"invalid YAML: unacceptable character #x{exc.character:04x}: {exc.reason}"
        parsed.errors.append(ConfigError(file, line, "", message))
        return parsed
    try:
        root = loader.get_single_node()
        if root is None:
            parsed.errors.append(ConfigError(file, None, "", "file is empty"))
            return parsed
        _index(root, (), root.start_mark.line + 1, parsed, set())
        parsed.data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        reason = ": ".join(part for part in (exc.context, exc.problem) if part)
        parsed.errors.append(ConfigError(file, mark.line + 1 if mark else None, "", f"invalid YAML: {reason}"))
    except yaml.YAMLError as exc:
        parsed.errors.append(ConfigError(file, None, "", f"invalid YAML: {exc}"))
    finally:
        loader.dispose()
    return parsed


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounds on nesting, aliases and nodes, checked as the document is composed: its
    composer recurses once per level (a deep file would raise RecursionError), aliases multiply what they reference,
    and a 1 MiB list of 350k items would take a minute and 300 MB to compose before _index counted them."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._nodes = 0  # as written, an alias one: never more than _index counts with aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > limits.MAX_YAML_ALIASES:
                raise yaml.composer.ComposerError(None, None, f"more than {limits.MAX_YAML_ALIASES} aliases", mark)
        self._nodes += 1
        if self._nodes > limits.MAX_YAML_NODES:
            raise yaml.composer.ComposerError(None, None, f"more than {limits.MAX_YAML_NODES} nodes", mark)
        self._depth += 1
        try:
            if self._depth > limits.MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {limits.MAX_YAML_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """PyYAML's safe constructors convert with int(), datetime(), a dict lookup: `!!int x`, `!!bool maybe`,
        `2001-13-45` or a 5000-digit number raise what the conversion raises. Here that is a YAML error at the node."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, KeyError, AttributeError, TypeError, OverflowError) as exc:
            kind = node.tag.removeprefix("tag:yaml.org,2002:")
            value = node.value if isinstance(node.value, str) else ""
            shown = repr(value) if len(value) <= 40 else f"{value[:40]!r}… ({len(value)} characters)"
            raise yaml.constructor.ConstructorError(None, None, f"not a valid {kind}: {shown}", node.start_mark) from exc


def _index(node: yaml.Node, path: KeyPath, line: int, parsed: _Parsed, ancestors: set[int]) -> None:
    """Record the line of every key path under ``node`` and report duplicate keys. Raises ComposerError past
    MAX_YAML_NODES nodes or MAX_YAML_DEPTH levels: aliases expand here as they would in the data, so a small file can
    stand for billions of nodes, or for nesting deep enough to exhaust the recursion of this walk and the constructor."""
    parsed.lines[path] = line
    parsed.nodes += 1
    if parsed.nodes > limits.MAX_YAML_NODES:
        problem = f"more than {limits.MAX_YAML_NODES} nodes once aliases are expanded"
        raise yaml.composer.ComposerError(None, None, problem, node.start_mark)
    if id(node) in ancestors:  # a recursive alias (`&a [*a]`) would never end
        return
    if len(path) >= limits.MAX_YAML_DEPTH:  # `&b [[*a]]` is two levels deeper than `a`: a chain of them, without end
        problem = f"nested deeper than {limits.MAX_YAML_DEPTH} levels once aliases are expanded"
        raise yaml.composer.ComposerError(None, None, problem, node.start_mark)
    ancestors = ancestors | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), item.start_mark.line + 1, parsed, ancestors)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):  # complex keys fail construction anyway
                continue
            if key.tag == _MERGE_TAG:
                # Not a config key, but its content is data: counted, since `&b {<<: *a, k: *a}` doubles per level.
                line = parsed.lines[path]
                _index(value, path, line, parsed, ancestors)
                parsed.lines[path] = line
                continue
            key_line = key.start_mark.line + 1
            identity = (key.tag, key.value)  # `1:` and `"1":` are different keys
            if identity in seen:
                parsed.errors.append(
                    ConfigError(
                        parsed.file, key_line, render_path((*path, key.value)), f"duplicate key (first on line {seen[identity]})"
                    )
                )
            seen.setdefault(identity, key_line)
            _index(value, (*path, key.value), key_line, parsed, ancestors)


def render_path(path: KeyPath) -> str:
    """``("rules", 2, "for")`` → ``rules[2].for``; keys that are not plain words are quoted."""
    out = ""
    for element in path:
        if isinstance(element, int):
            out += f"[{element}]"
        elif _PLAIN_KEY.fullmatch(element):
            out += f".{element}" if out else element
        else:
            out += f"[{json.dumps(element)}]"
    return out


def _display(file: Path) -> str:
    # Lexical normalisation, for display only: "config/../policies/prod.yaml" reads as the file being edited.
    shown = Path(os.path.normpath(file.absolute()))
    here = Path.cwd()
    if here == Path(here.anchor):  # under systemd the cwd is "/": "etc/hybridops/…" would read as a relative path
        return str(shown)
    try:
        return str(shown.relative_to(here))
    except ValueError:
        return str(shown)


# --------------------------------------------------------------------------------------------- validation


def _validate(model: type[M], parsed: _Parsed) -> M | None:
    """Validate the parsed data; structural errors are appended to ``parsed.errors``."""
    if parsed.data is None and parsed.errors:
        return None
    try:
        return model.model_validate(parsed.data)
    except ValidationError as exc:
        details = exc.errors()
        parsed.errors.extend(_from_pydantic(model, detail, parsed) for detail in details if not _echo(detail, details))
        return None


def _echo(detail: ErrorDetails, details: list[ErrorDetails]) -> bool:
    """A "too short" error on a list whose items themselves failed: pydantic counts the list after dropping the bad
    items. The item errors say what is wrong; this one would only confuse."""
    if detail["type"] != "too_short":
        return False
    loc = tuple(detail["loc"])
    return any(len(other["loc"]) > len(loc) and tuple(other["loc"][: len(loc)]) == loc for other in details)


def _check_profile(path: Path, known_drivers: Mapping[str, frozenset[str]]) -> tuple[Profile | None, list[ConfigError]]:
    parsed = _parse(path)
    profile = _validate(Profile, parsed)
    if profile is not None:
        parsed.errors.extend(parsed.error(where, message) for where, message in profile_problems(profile, dict(known_drivers)))
    return profile, _by_line(parsed.errors)


def _check_daemon_config(path: Path) -> tuple[DaemonConfig | None, _Parsed, list[ConfigError]]:
    parsed = _parse(path)
    config = _validate(DaemonConfig, parsed)
    # absolute(): the daemon keeps these paths for its lifetime, whatever its working directory becomes.
    resolved = config.resolved(path.absolute().parent) if config is not None else None
    return resolved, parsed, _by_line(parsed.errors)


def _raw_lane_profiles(parsed: _Parsed) -> dict[str, Path]:
    """Profile paths the lanes name, read from an invalid config so its profiles still get checked."""
    lanes = parsed.data.get("lanes") if isinstance(parsed.data, dict) else None
    if not isinstance(lanes, dict):
        return {}
    base = parsed.file.absolute().parent
    return {
        str(name): base / lane["profile"]
        for name, lane in lanes.items()
        if isinstance(lane, dict) and isinstance(lane.get("profile"), str)
    }


def _by_line(errors: list[ConfigError]) -> list[ConfigError]:
    return sorted(errors, key=lambda error: error.line or 0)


def _from_pydantic(model: type[BaseModel], detail: ErrorDetails, parsed: _Parsed) -> ConfigError:
    loc = tuple(detail["loc"])
    path, _, invalid_key = _locate(model, loc)
    kind = detail["type"]
    ctx = detail.get("ctx", {})
    if kind == "extra_forbidden":
        _, parent, _ = _locate(model, loc[:-1])
        allowed = [info.alias or name for name, info in parent.model_fields.items()] if parent else []
        message = f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        # Point at the tag key itself: `sources[1].type`, not the whole item.
        path = (*path, str(ctx["discriminator"]).strip("'"))
        message = _MESSAGES["missing"] if kind == "union_tag_not_found" else f"must be one of {ctx['expected_tags']}"
    elif kind in _MESSAGES:
        message = _MESSAGES[kind]
    else:
        message = detail["msg"].removeprefix("Value error, ").replace("Input should be", "must be", 1)
    return parsed.error(path, f"invalid key: {message}" if invalid_key else message)


def _locate(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[KeyPath, type[BaseModel] | None, bool]:
    """Map a pydantic loc onto the file: (key path, model at that path if any, whether the error is about a key).

    Walks the model's annotations alongside the loc to drop the tags pydantic inserts for discriminated unions
    (``sources.0.http_probe.url`` is ``sources[0].url`` in the file).
    """
    path: list[str | int] = []
    current: Any = model
    tags: dict[str, Any] | None = None
    for i, element in enumerate(loc):
        if element == "[key]" and i == len(loc) - 1:  # pydantic's marker for an invalid dict key
            return tuple(path), None, True
        if tags is not None:
            current, tags = tags.get(str(element)), None
            continue
        path.append(element)
        current, tags = _child(current, element)
    return tuple(path), current if _is_model(current) else None, False


def _child(parent: Any, element: str | int) -> tuple[Any, dict[str, Any] | None]:
    """The annotation one loc element below ``parent``, or the tag → member map if it is a discriminated union."""
    if _is_model(parent) and isinstance(element, str):
        info = next(
            (info for name, info in parent.model_fields.items() if element in (name, info.alias)),
            None,
        )
        return _unwrap(info.annotation, info.discriminator) if info else (None, None)
    origin, args = get_origin(parent), get_args(parent)
    if origin in (tuple, list) and isinstance(element, int) and args:
        return _unwrap(args[0])
    if origin is dict and args:
        return _unwrap(args[1])
    return None, None


def _unwrap(annotation: Any, discriminator: object = None) -> tuple[Any, dict[str, Any] | None]:
    """Strip Annotated and Optional; a discriminated union becomes a map from tag to member model."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *metadata = get_args(annotation)
            for meta in metadata:
                if isinstance(meta, FieldInfo) and meta.discriminator is not None:
                    discriminator = meta.discriminator
            continue
        if origin in (Union, UnionType):
            members = [arg for arg in get_args(annotation) if arg is not NoneType]
            if len(members) == 1:
                annotation = members[0]
                continue
        break
    if not isinstance(discriminator, str):  # callable discriminators have free-form tags: not resolved
        return annotation, None
    candidates = get_args(annotation) if origin in (Union, UnionType) else (annotation,)
    tags: dict[str, Any] = {}
    for member in candidates:
        tag_field = member.model_fields.get(discriminator) if _is_model(member) else None
        if tag_field is not None and get_origin(tag_field.annotation) is Literal:
            tags.update({str(value): member for value in get_args(tag_field.annotation)})
    return None, tags


def _is_model(annotation: Any) -> TypeGuard[type[BaseModel]]:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
