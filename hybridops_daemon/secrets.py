"""Secrets by reference: a profile names an environment variable or a file, never the secret itself.

Files may be relative to systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from hybridops_daemon.config.models import SecretRef


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
