"""Structural redaction, applied before anything is written: journal records and log lines alike.

Two rules, both applied everywhere:

* **by key** — a mapping key that names a secret (``db_password``, ``api_token``, ``X-API-Key``, ``ipsec_psk``) has
  its value replaced by ``"[REDACTED]"``, whatever the value is. Keys are split into words on ``_``, ``-``, ``.``,
  spaces and camelCase, so ``tokenizer`` or ``secretary`` do not match but ``accessToken`` does. A key whose word
  after the secret word says it *describes* the secret rather than holds it (``token_count``, ``token_ttl``,
  ``password_file``, ``client_secret_env``) is kept: those are what an auditor needs, and the design passes
  secrets by reference (file or env var) precisely so the reference can be recorded. ``fencing_token`` is a lease
  revision, not a credential, and is kept too.
* **by value** — every registered secret value is replaced wherever it occurs inside any string: input values,
  driver log lines, exception messages, log events.

Redaction by value only works for values the daemon knows, so whoever resolves a secret reference registers the
value (``add_secret``) before handing it to a driver.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

REDACTED = "[REDACTED]"

# Shorter values are too likely to be ordinary text ("prod", "true", "1234" as a port): replacing every occurrence
# would mangle the journal while protecting little, since a secret that short is no secret.
MIN_SECRET_LENGTH = 4

_SECRET_WORDS = frozenset(
    {"password", "passwd", "passphrase", "secret", "token", "apikey", "privatekey", "authorization", "credential", "psk"}
)
# Words that, right after a secret word, make the key a description of the secret rather than the secret.
_DESCRIBES_SECRET = frozenset(
    {
        "count",
        "ttl",
        "expiry",
        "expires",
        "expiration",
        "age",
        "type",
        "kind",
        "length",
        "env",
        "file",
        "path",
        "ref",
        "refs",
        "reference",
        "references",
    }
)
# Words that, right before a secret word, make it something else: a fencing token is a lease revision.
_NOT_A_SECRET_BEFORE = frozenset({"fencing"})
_JOINED = {"api": "apikey", "private": "privatekey"}  # "api_key", "X-API-Key", "private.key" → one word
_KEY_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def _singular(word: str) -> str:
    if word.endswith("s") and (word[:-1] in _SECRET_WORDS or word[:-1] == "key"):
        return word[:-1]
    return word


def _key_words(key: str) -> list[str]:
    parts = [_singular(p.lower()) for p in _KEY_WORD.findall(key)]
    words: list[str] = []
    i = 0
    while i < len(parts):
        if parts[i] in _JOINED and i + 1 < len(parts) and parts[i + 1] == "key":
            words.append(_JOINED[parts[i]])
            i += 2
        else:
            words.append(parts[i])
            i += 1
    return words


@functools.lru_cache(maxsize=4096)  # the same few hundred keys recur in every record and log event
def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret, so that its value must not be written (see the module docstring)."""
    words = _key_words(key)
    hits = [i for i, word in enumerate(words) if word in _SECRET_WORDS and not (i > 0 and words[i - 1] in _NOT_A_SECRET_BEFORE)]
    if not hits:
        return False
    after = words[hits[-1] + 1 :]
    return not after or after[0] not in _DESCRIBES_SECRET


EventDict = MutableMapping[str, Any]


class Redactor:
    """Replaces secrets by key and by value. One instance is shared by the journal and the log pipeline.

    No locks: ``add_secret`` builds the new pattern first and then swaps one attribute, so a concurrent ``redact``
    (another asyncio task, or a logging thread) sees either the old or the new pattern, never a half-built one.
    """

    def __init__(self, secret_values: Iterable[str] = ()) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        for value in secret_values:
            self.add_secret(value)

    def add_secret(self, value: str) -> None:
        """Register a secret value; values shorter than ``MIN_SECRET_LENGTH`` are ignored.

        The stripped form is registered too: a secret read from a file usually carries a trailing newline that the
        driver strips before the value reaches a URL, a header or an error message.
        """
        new = {v for v in (value, value.strip()) if len(v) >= MIN_SECRET_LENGTH} - self._secrets
        if not new:
            return
        secrets = self._secrets | new
        # Longest first: where one secret contains another, the longer one is replaced whole.
        ordered = sorted(secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in ordered))
        self._secrets = secrets

    def redact_text(self, text: str) -> str:
        """``text`` with every occurrence of every registered secret replaced by ``"[REDACTED]"``."""
        pattern = self._pattern
        return text if pattern is None else pattern.sub(REDACTED, text)

    def redact(self, obj: object) -> object:
        """A redacted copy of ``obj``: recursive over mappings (returned as dicts), lists and tuples.

        Values of types other than str, mappings, lists and tuples are returned as they are; the journal's JSON
        encoder stringifies and redacts them.
        """
        return self._walk(obj, stringify=False)

    def processor(self) -> Callable[[object, str, EventDict], EventDict]:
        """A structlog processor that redacts the event dict.

        Place it after ``format_exc_info`` (or ``ExceptionRenderer``) so rendered tracebacks are redacted, and before
        the renderer. Unlike ``redact``, it also stringifies any other value whose text contains a secret (an
        exception object passed as a field), because the renderer would print that text.
        """

        def redact_event(_logger: object, _method_name: str, event_dict: EventDict) -> EventDict:
            redacted = self._walk(event_dict, stringify=True)
            assert isinstance(redacted, dict)
            return redacted

        return redact_event

    def _walk(self, obj: object, *, stringify: bool) -> object:
        if isinstance(obj, str):
            return self.redact_text(obj)
        if isinstance(obj, Mapping):
            return {
                (self.redact_text(k) if isinstance(k, str) else k): (
                    REDACTED if isinstance(k, str) and is_secret_key(k) else self._walk(v, stringify=stringify)
                )
                for k, v in obj.items()
            }
        if isinstance(obj, list):
            return [self._walk(v, stringify=stringify) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self._walk(v, stringify=stringify) for v in obj)
        if stringify and self._pattern is not None and not isinstance(obj, int | float | None):
            text = str(obj)
            redacted = self.redact_text(text)
            return obj if redacted == text else redacted
        return obj
