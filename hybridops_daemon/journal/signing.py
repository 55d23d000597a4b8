"""Record signatures and head anchors: what lets ``verify`` prove a journal's end, which a hash chain alone cannot.

A record's ``sig`` column is ``hmac_sha256(key, hash).hexdigest()`` with the node's journal key (given by reference,
never stored). The hash covers ``prev_hash``, so one valid signature vouches for every record before it: records
written before the key was configured are covered by the first signed record. From the first signed record on, every
record must be signed: one without a signature after it was appended by someone without the key.

A signature cannot show records cut from the end (what remains is genuinely signed); an anchored head can: the
``(seq, hash)`` of a record that must still be there, kept outside the journal (the peer edge, an auditor's ticket).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from contextlib import suppress
from dataclasses import dataclass, field


def sign(key: bytes, record_hash: str) -> str:
    return hmac.new(key, record_hash.encode("ascii"), hashlib.sha256).hexdigest()


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` as ``journal head`` prints it. Raises ValueError with an operator-facing message."""
    seq, sep, digest = text.strip().partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"expected SEQ:HASH (a record number and 64 lowercase hex digits), got {text!r}")
    return int(seq), digest


@dataclass(slots=True)
class SignatureCheck:
    """Fed every record of a walk in seq order; says which signatures are missing or wrong under ``key``.

    Without a key it only counts the signed records (what ``verify`` reports as "signatures not checked").
    """

    key: bytes | None
    signed: int = 0
    first_signed: int = 0
    problems: list[str] = field(default_factory=list)

    def see(self, seq: int, record_hash: str, sig: str | None) -> None:
        if sig is None:
            if self.key is not None and self.first_signed:
                self.problems.append(f"record {seq} is not signed, but records before it are (appended without the key?)")
            return
        self.signed += 1
        self.first_signed = self.first_signed or seq
        if self.key is not None and not hmac.compare_digest(sign(self.key, str(record_hash)), str(sig)):
            self.problems.append(f"record {seq}'s signature does not match the key (forged, or signed with another key)")

    def finish(self) -> list[str]:
        if self.key is not None and not self.signed:
            return ["no record is signed with the key: the journal was written without it, or rewritten"]
        return self.problems


@dataclass(frozen=True, slots=True)
class Anchor:
    """An expected head: the record at ``seq`` must be present with ``hash`` (or be the last a summary removed)."""

    seq: int
    hash: str

    def check(self, head_seq: int, found: str | None, first_seq: int, summaries: list[tuple[int, str]]) -> list[str]:
        """``found``: the hash of the record at ``seq`` in the walk (None if absent)."""
        if self.seq == 0:
            return [] if self.hash == "0" * 64 else ["record 0 is the genesis: its hash is 64 zeros"]
        if self.seq > head_seq:
            return [f"the journal ends at record {head_seq}, before the anchored head {self.seq} (records cut from the end?)"]
        if found is None and self.seq < first_seq:
            found = _removed_hash(self.seq, summaries)
            if found is None:
                return [f"the anchored record {self.seq} was pruned by retention: anchor a newer head to check it"]
        if found is None:
            return [f"the anchored record {self.seq} is missing"]
        if found != self.hash:
            return [f"record {self.seq} has hash {found}, not the anchored {self.hash} (rewritten?)"]
        return []


def _removed_hash(seq: int, summaries: list[tuple[int, str]]) -> str | None:
    """The hash of record ``seq`` if a retention summary says it was the last one it removed."""
    for _, text in summaries:
        with suppress(ValueError, TypeError, KeyError):
            body = json.loads(text)
            if int(body["last_seq"]) == seq:
                return str(body["last_removed_hash"])
    return None
