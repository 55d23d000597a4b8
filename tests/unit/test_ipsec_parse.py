"""The VICI ``list-sas`` decoder on real replies.

Every fixture below was captured from the testbed's charon pair (tests/testbed/strongswan.py; strongSwan 5.9.8,
kernel-libipsec) with ``vici.Session.list_sas()`` / ``list_conns()``; values are bytes exactly as vici yields
them. Transient states (rekeying, connecting) were held still by cutting the veth link (``NetnsPair.cut()``)
before the rekey/initiate, so the request stayed unanswered while the reply was captured.
"""

from __future__ import annotations

from typing import Any

import pytest

from hybridops_daemon.signals.base import UpstreamError
from hybridops_daemon.signals.ipsec import decode_conns, decode_sas, tunnel_states

# A (initiator) with dr up and its child net INSTALLED.
ESTABLISHED: list[dict[str, Any]] = [
    {
        "dr": {
            "uniqueid": b"1",
            "version": b"2",
            "state": b"ESTABLISHED",
            "local-host": b"10.99.0.1",
            "local-port": b"4500",
            "local-id": b"r1",
            "remote-host": b"10.99.0.2",
            "remote-port": b"4500",
            "remote-id": b"r2",
            "initiator": b"yes",
            "initiator-spi": b"14b2bca6ba044b81",
            "responder-spi": b"912e0e8ffcde3a2b",
            "nat-remote": b"yes",
            "nat-any": b"yes",
            "encr-alg": b"AES_CBC",
            "encr-keysize": b"256",
            "integ-alg": b"HMAC_SHA2_256_128",
            "prf-alg": b"PRF_HMAC_SHA2_256",
            "dh-group": b"MODP_2048",
            "established": b"0",
            "rekey-time": b"13957",
            "child-sas": {
                "net-1": {
                    "name": b"net",
                    "uniqueid": b"1",
                    "reqid": b"1",
                    "state": b"INSTALLED",
                    "mode": b"TUNNEL",
                    "protocol": b"ESP",
                    "encap": b"yes",
                    "spi-in": b"c1b27d69",
                    "spi-out": b"64d3f72a",
                    "encr-alg": b"AES_GCM_16",
                    "encr-keysize": b"256",
                    "bytes-in": b"0",
                    "packets-in": b"0",
                    "bytes-out": b"0",
                    "packets-out": b"0",
                    "rekey-time": b"3438",
                    "life-time": b"3960",
                    "install-time": b"0",
                    "local-ts": [b"10.98.1.0/24"],
                    "remote-ts": [b"10.98.2.0/24"],
                }
            },
        }
    }
]

# The same tunnel seen from B (the responder: no ``initiator`` key).
ESTABLISHED_RESPONDER: list[dict[str, Any]] = [
    {
        "dr": {
            "uniqueid": b"1",
            "version": b"2",
            "state": b"ESTABLISHED",
            "local-host": b"10.99.0.2",
            "local-port": b"4500",
            "local-id": b"r2",
            "remote-host": b"10.99.0.1",
            "remote-port": b"4500",
            "remote-id": b"r1",
            "initiator-spi": b"14b2bca6ba044b81",
            "responder-spi": b"912e0e8ffcde3a2b",
            "nat-remote": b"yes",
            "nat-any": b"yes",
            "encr-alg": b"AES_CBC",
            "encr-keysize": b"256",
            "integ-alg": b"HMAC_SHA2_256_128",
            "prf-alg": b"PRF_HMAC_SHA2_256",
            "dh-group": b"MODP_2048",
            "established": b"0",
            "rekey-time": b"13684",
            "child-sas": {
                "net-1": {
                    "name": b"net",
                    "uniqueid": b"1",
                    "reqid": b"1",
                    "state": b"INSTALLED",
                    "mode": b"TUNNEL",
                    "protocol": b"ESP",
                    "encap": b"yes",
                    "spi-in": b"64d3f72a",
                    "spi-out": b"c1b27d69",
                    "encr-alg": b"AES_GCM_16",
                    "encr-keysize": b"256",
                    "bytes-in": b"0",
                    "packets-in": b"0",
                    "bytes-out": b"0",
                    "packets-out": b"0",
                    "rekey-time": b"3430",
                    "life-time": b"3960",
                    "install-time": b"0",
                    "local-ts": [b"10.98.2.0/24"],
                    "remote-ts": [b"10.98.1.0/24"],
                }
            },
        }
    }
]

# After ``swanctl --terminate --child net``: the IKE SA stays, no CHILD SA.
IKE_WITHOUT_CHILD: list[dict[str, Any]] = [
    {
        "dr": {
            "uniqueid": b"2",
            "version": b"2",
            "state": b"ESTABLISHED",
            "local-host": b"10.99.0.1",
            "local-port": b"4500",
            "local-id": b"r1",
            "remote-host": b"10.99.0.2",
            "remote-port": b"4500",
            "remote-id": b"r2",
            "initiator": b"yes",
            "initiator-spi": b"c6d08927309d6c4b",
            "responder-spi": b"c29e14da92f1e5f5",
            "nat-remote": b"yes",
            "nat-any": b"yes",
            "encr-alg": b"AES_CBC",
            "encr-keysize": b"256",
            "integ-alg": b"HMAC_SHA2_256_128",
            "prf-alg": b"PRF_HMAC_SHA2_256",
            "dh-group": b"MODP_2048",
            "established": b"0",
            "rekey-time": b"13759",
            "child-sas": {},
        }
    }
]

# After ``swanctl --terminate --ike dr``: no SA at all.
NONE: list[dict[str, Any]] = []

# ``swanctl --rekey --ike dr`` with the link cut: the IKE rekey is in flight, the child still installed.
IKE_REKEYING: list[dict[str, Any]] = [
    {
        "dr": {
            "uniqueid": b"1",
            "version": b"2",
            "state": b"REKEYING",
            "local-host": b"10.99.0.1",
            "local-port": b"4500",
            "local-id": b"r1",
            "remote-host": b"10.99.0.2",
            "remote-port": b"4500",
            "remote-id": b"r2",
            "initiator": b"yes",
            "initiator-spi": b"d032d4e3e9a4def5",
            "responder-spi": b"2c363030f9b8e57e",
            "nat-remote": b"yes",
            "nat-any": b"yes",
            "encr-alg": b"AES_CBC",
            "encr-keysize": b"256",
            "integ-alg": b"HMAC_SHA2_256_128",
            "prf-alg": b"PRF_HMAC_SHA2_256",
            "dh-group": b"MODP_2048",
            "tasks-active": [b"IKE_REKEY"],
            "child-sas": {
                "net-1": {
                    "name": b"net",
                    "uniqueid": b"1",
                    "reqid": b"1",
                    "state": b"INSTALLED",
                    "mode": b"TUNNEL",
                    "protocol": b"ESP",
                    "encap": b"yes",
                    "spi-in": b"a167053d",
                    "spi-out": b"0883d92b",
                    "encr-alg": b"AES_GCM_16",
                    "encr-keysize": b"256",
                    "bytes-in": b"0",
                    "packets-in": b"0",
                    "bytes-out": b"0",
                    "packets-out": b"0",
                    "rekey-time": b"3336",
                    "life-time": b"3960",
                    "install-time": b"0",
                    "local-ts": [b"10.98.1.0/24"],
                    "remote-ts": [b"10.98.2.0/24"],
                }
            },
        }
    }
]

# ``swanctl --rekey --child net`` with the link cut: the CHILD SA is REKEYING.
CHILD_REKEYING: list[dict[str, Any]] = [
    {
        "dr": {
            "uniqueid": b"2",
            "version": b"2",
            "state": b"ESTABLISHED",
            "local-host": b"10.99.0.1",
            "local-port": b"4500",
            "local-id": b"r1",
            "remote-host": b"10.99.0.2",
            "remote-port": b"4500",
            "remote-id": b"r2",
            "initiator": b"yes",
            "initiator-spi": b"34c6df909e64d0b3",
            "responder-spi": b"01ae9cd224a5d47c",
            "nat-remote": b"yes",
            "nat-any": b"yes",
            "encr-alg": b"AES_CBC",
            "encr-keysize": b"256",
            "integ-alg": b"HMAC_SHA2_256_128",
            "prf-alg": b"PRF_HMAC_SHA2_256",
            "dh-group": b"MODP_2048",
            "established": b"4",
            "rekey-time": b"13609",
            "tasks-active": [b"CHILD_REKEY"],
            "child-sas": {
                "net-1": {
                    "name": b"net",
                    "uniqueid": b"1",
                    "reqid": b"1",
                    "state": b"REKEYING",
                    "mode": b"TUNNEL",
                    "protocol": b"ESP",
                    "encap": b"yes",
                    "spi-in": b"a167053d",
                    "spi-out": b"0883d92b",
                    "encr-alg": b"AES_GCM_16",
                    "encr-keysize": b"256",
                    "bytes-in": b"0",
                    "packets-in": b"0",
                    "bytes-out": b"0",
                    "packets-out": b"0",
                    "rekey-time": b"3328",
                    "life-time": b"3952",
                    "install-time": b"8",
                    "local-ts": [b"10.98.1.0/24"],
                    "remote-ts": [b"10.98.2.0/24"],
                }
            },
        }
    }
]

# Just after a child rekey: the old CHILD SA DELETED next to the new one INSTALLED (same name).
CHILD_REKEYED: list[dict[str, Any]] = [
    {
        "dr": {
            "uniqueid": b"2",
            "version": b"2",
            "state": b"ESTABLISHED",
            "local-host": b"10.99.0.1",
            "local-port": b"4500",
            "local-id": b"r1",
            "remote-host": b"10.99.0.2",
            "remote-port": b"4500",
            "remote-id": b"r2",
            "initiator": b"yes",
            "initiator-spi": b"c6d08927309d6c4b",
            "responder-spi": b"c29e14da92f1e5f5",
            "nat-remote": b"yes",
            "nat-any": b"yes",
            "encr-alg": b"AES_CBC",
            "encr-keysize": b"256",
            "integ-alg": b"HMAC_SHA2_256_128",
            "prf-alg": b"PRF_HMAC_SHA2_256",
            "dh-group": b"MODP_2048",
            "established": b"0",
            "rekey-time": b"13759",
            "child-sas": {
                "net-1": {
                    "name": b"net",
                    "uniqueid": b"1",
                    "reqid": b"1",
                    "state": b"DELETED",
                    "mode": b"TUNNEL",
                    "protocol": b"ESP",
                    "encap": b"yes",
                    "spi-in": b"c1b27d69",
                    "spi-out": b"64d3f72a",
                    "encr-alg": b"AES_GCM_16",
                    "encr-keysize": b"256",
                    "bytes-in": b"0",
                    "packets-in": b"0",
                    "bytes-out": b"0",
                    "packets-out": b"0",
                    "rekey-time": b"3438",
                    "life-time": b"3960",
                    "install-time": b"0",
                    "local-ts": [b"10.98.1.0/24"],
                    "remote-ts": [b"10.98.2.0/24"],
                },
                "net-2": {
                    "name": b"net",
                    "uniqueid": b"2",
                    "reqid": b"1",
                    "state": b"INSTALLED",
                    "mode": b"TUNNEL",
                    "protocol": b"ESP",
                    "encap": b"yes",
                    "spi-in": b"fd35a3d6",
                    "spi-out": b"1b46821c",
                    "encr-alg": b"AES_GCM_16",
                    "encr-keysize": b"256",
                    "bytes-in": b"0",
                    "packets-in": b"0",
                    "bytes-out": b"0",
                    "packets-out": b"0",
                    "rekey-time": b"3475",
                    "life-time": b"3960",
                    "install-time": b"0",
                    "local-ts": [b"10.98.1.0/24"],
                    "remote-ts": [b"10.98.2.0/24"],
                },
            },
        }
    }
]

# ``swanctl --initiate`` with the link cut: IKE_SA_INIT unanswered, no CHILD SA yet.
CONNECTING: list[dict[str, Any]] = [
    {
        "dr": {
            "uniqueid": b"3",
            "version": b"2",
            "state": b"CONNECTING",
            "local-host": b"10.99.0.1",
            "local-port": b"500",
            "local-id": b"%any",
            "remote-host": b"10.99.0.2",
            "remote-port": b"500",
            "remote-id": b"%any",
            "initiator": b"yes",
            "initiator-spi": b"b4cb619b88e9899b",
            "responder-spi": b"0000000000000000",
            "tasks-active": [
                b"IKE_VENDOR",
                b"IKE_INIT",
                b"IKE_NATD",
                b"IKE_CERT_PRE",
                b"IKE_AUTH",
                b"IKE_CERT_POST",
                b"IKE_CONFIG",
                b"IKE_AUTH_LIFETIME",
                b"IKE_MOBIKE",
                b"IKE_ESTABLISH",
                b"CHILD_CREATE",
            ],
            "child-sas": {},
        }
    }
]

# ``list_conns()`` on A: the loaded connection dr with its child net.
CONNS: list[dict[str, Any]] = [
    {
        "dr": {
            "local_addrs": [b"10.99.0.1"],
            "remote_addrs": [b"10.99.0.2"],
            "version": b"IKEv2",
            "reauth_time": b"0",
            "rekey_time": b"14400",
            "unique": b"UNIQUE_NO",
            "local-1": {"id": b"r1", "class": b"pre-shared key", "groups": [], "cert_policy": [], "certs": [], "cacerts": []},
            "remote-1": {"id": b"r2", "class": b"pre-shared key", "groups": [], "cert_policy": [], "certs": [], "cacerts": []},
            "children": {
                "net": {
                    "mode": b"TUNNEL",
                    "rekey_time": b"3600",
                    "rekey_bytes": b"0",
                    "rekey_packets": b"0",
                    "dpd_action": b"none",
                    "close_action": b"none",
                    "local-ts": [b"10.98.1.0/24"],
                    "remote-ts": [b"10.98.2.0/24"],
                }
            },
        }
    }
]

BOTH = [("dr", "net"), ("dr", None)]


def test_decode_established() -> None:
    assert decode_sas(ESTABLISHED) == [("dr", "ESTABLISHED", [("net", "INSTALLED")])]


def test_decode_reads_child_names_from_the_name_field_not_the_key() -> None:
    # child-sas keys are "<name>-<uniqueid>" (net-1, net-2): only the ``name`` field is the configured name
    assert decode_sas(CHILD_REKEYED) == [("dr", "ESTABLISHED", [("net", "DELETED"), ("net", "INSTALLED")])]


def test_decode_conns() -> None:
    assert decode_conns(CONNS) == {"dr": frozenset({"net"})}


@pytest.mark.parametrize(
    ("sas", "expected"),
    [
        (ESTABLISHED, {("dr", "net"): True, ("dr", None): True}),
        (ESTABLISHED_RESPONDER, {("dr", "net"): True, ("dr", None): True}),
        (IKE_WITHOUT_CHILD, {("dr", "net"): False, ("dr", None): True}),
        (NONE, {("dr", "net"): False, ("dr", None): False}),
        (CONNECTING, {("dr", "net"): False, ("dr", None): False}),
        # a rekey in flight keeps the old SAs in use: still up (no flap on every routine rekey)
        (IKE_REKEYING, {("dr", "net"): True, ("dr", None): True}),
        (CHILD_REKEYING, {("dr", "net"): True, ("dr", None): True}),
        # the DELETED old child does not hide the INSTALLED new one of the same name
        (CHILD_REKEYED, {("dr", "net"): True, ("dr", None): True}),
    ],
    ids=[
        "established",
        "responder",
        "ike-without-child",
        "none",
        "connecting",
        "ike-rekeying",
        "child-rekeying",
        "child-rekeyed",
    ],
)
def test_tunnel_states(sas: list[dict[str, Any]], expected: dict[tuple[str, str | None], bool]) -> None:
    assert tunnel_states(sas, BOTH) == expected
    # knowing the loaded connections changes nothing for names charon knows
    assert tunnel_states(sas, BOTH, CONNS) == expected


def test_unknown_ike_name_is_none_only_when_the_connections_are_known() -> None:
    tunnels = [("nope", None), ("nope", "net"), ("dr", "net")]
    assert tunnel_states(NONE, tunnels) == {("nope", None): False, ("nope", "net"): False, ("dr", "net"): False}
    assert tunnel_states(NONE, tunnels, CONNS) == {("nope", None): None, ("nope", "net"): None, ("dr", "net"): False}
    assert tunnel_states(ESTABLISHED, tunnels, CONNS) == {("nope", None): None, ("nope", "net"): None, ("dr", "net"): True}


def test_unknown_child_of_a_known_connection_is_none() -> None:
    tunnels = [("dr", "other"), ("dr", "net")]
    assert tunnel_states(ESTABLISHED, tunnels, CONNS) == {("dr", "other"): None, ("dr", "net"): True}
    assert tunnel_states(IKE_WITHOUT_CHILD, tunnels, CONNS) == {("dr", "other"): None, ("dr", "net"): False}


def test_an_sa_whose_connection_was_unloaded_is_still_judged() -> None:
    # the SA outlives its config (swanctl --load-conns without it): its name is known from the SA itself
    assert tunnel_states(IKE_WITHOUT_CHILD, [("dr", None), ("dr", "net")], []) == {("dr", None): True, ("dr", "net"): False}


def test_str_values_are_accepted_like_bytes() -> None:
    as_str = [{"dr": {"state": "ESTABLISHED", "child-sas": {"net-1": {"name": "net", "state": "INSTALLED"}}}}]
    assert tunnel_states(as_str, BOTH) == {("dr", "net"): True, ("dr", None): True}


@pytest.mark.parametrize(
    "sas",
    [
        [{"dr": {"child-sas": {}}}],  # no state
        [{"dr": {"state": b"\xff\xfe", "child-sas": {}}}],  # not UTF-8
        [{"dr": b"ESTABLISHED"}],  # IKE SA not a section
        [[b"dr"]],  # event not a section
        [{"dr": {"state": b"ESTABLISHED", "child-sas": {"net-1": {"state": b"INSTALLED"}}}}],  # child without name
        [{"dr": {"state": b"ESTABLISHED", "child-sas": [b"net"]}}],  # child-sas not a section
    ],
    ids=["no-state", "not-utf8", "ike-not-section", "event-not-section", "child-no-name", "children-not-section"],
)
def test_wrong_shapes_are_upstream_errors(sas: list[Any]) -> None:
    with pytest.raises(UpstreamError):
        tunnel_states(sas, BOTH)
