"""Redaction before truncation: a secret planted at every offset around every limit a driver cuts an upstream's
message at never reaches the message, not even its first characters (issue #19: NetBox let 24 through)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from hybridops_daemon.drivers.ansible import _result_message
from hybridops_daemon.drivers.base import clipped
from hybridops_daemon.drivers.dns import _error_text
from hybridops_daemon.drivers.netbox import _netbox_message

SECRET = "nbt_Sk3cr3tT0k3n.4f9a2c7e1b"


class Response:
    """What pynetbox hands the driver: the request's response, JSON or not."""

    def __init__(self, text: str, body: Any = None) -> None:
        self.text, self.reason, self._body = text, "Bad Request", body

    def json(self) -> Any:
        if self._body is None:
            raise ValueError("not JSON")
        return self._body


def leaked(message: str) -> str | None:
    """The longest start of SECRET (4 characters or more) found in ``message``."""
    return next((SECRET[:k] for k in range(len(SECRET), 3, -1) if SECRET[:k] in message), None)


# (name, limit, builds the message from a text holding the secret)
CUTS: list[tuple[str, int, Callable[[str], str]]] = [
    ("clipped", 100, lambda text: clipped(text, 100, SECRET)),
    ("netbox text body", 300, lambda text: _netbox_message(Response(text), SECRET)),
    ("netbox detail", 500, lambda text: _netbox_message(Response("", {"detail": text}), SECRET)),
    ("netbox field errors", 500, lambda text: _netbox_message(Response("", {"__all__": [text]}), SECRET)),
    ("netbox other JSON", 500, lambda text: _netbox_message(Response("", [text]), SECRET)),
    ("powerdns error body", 300, lambda text: _error_text(json.dumps({"error": text}), SECRET)),
    ("ansible task result", 500, lambda text: _result_message(json.dumps({"msg": text}), (SECRET,))),
]


@pytest.mark.parametrize(("name", "limit", "message"), CUTS, ids=[cut[0] for cut in CUTS])
def test_a_secret_at_any_offset_around_the_cut_never_leaks(name: str, limit: int, message: Callable[[str], str]) -> None:
    for offset in range(max(0, limit - len(SECRET) - 30), limit + 3):
        text = "e" * offset + SECRET + " and the rest of the echoed request"
        shown = message(text)
        assert len(shown) <= limit + 16, f"{name}: not cut ({len(shown)} characters)"  # the prefix a driver adds
        assert leaked(shown) is None, f"{name}: {leaked(shown)!r} leaked with the secret at offset {offset}"
