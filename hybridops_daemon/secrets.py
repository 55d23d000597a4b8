"""Secrets by reference: a profile names an environment variable or a file, never the secret itself.

Files may be relative to systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import BaseModel

from hybridops_daemon.config.base import SecretRef


class SecretUnavailable(Exception):
    """The reference points at nothing readable. The message names the reference, never a value."""


def resolve(name: str, ref: SecretRef) -> str:
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if not value:
            raise SecretUnavailable(f"secret {name!r}: environment variable {ref.env} is not set")
        return value
    assert ref.file is not None
    path = ref.file
    if not path.is_absolute() and "CREDENTIALS_DIRECTORY" in os.environ:
        path = Path(os.environ["CREDENTIALS_DIRECTORY"]) / path
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretUnavailable(f"secret {name!r}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise SecretUnavailable(f"secret {name!r}: {path} is empty")
    return value


def resolve_all(refs: Mapping[str, SecretRef]) -> dict[str, str]:
    return {name: resolve(name, ref) for name, ref in refs.items()}


def referenced(node: object) -> Iterator[tuple[str, SecretRef]]:
    """Every SecretRef inside a config (models, mappings, sequences), with the key path that names it."""
    stack: list[tuple[str, object]] = [("", node)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, SecretRef):
            yield path, item
        elif isinstance(item, BaseModel):
            stack.extend((f"{path}.{name}".lstrip("."), getattr(item, name)) for name in type(item).model_fields)
        elif isinstance(item, Mapping):
            stack.extend((f"{path}.{key}".lstrip("."), value) for key, value in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{i}]", value) for i, value in enumerate(item))
