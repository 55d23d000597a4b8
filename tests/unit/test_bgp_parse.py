"""The pure BGP parsers against real outputs of FRR 8.4 and BIRD 2.0.12 (tests/unit/fixtures/bgp/, see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybridops_daemon.signals.bgp import MalformedOutput, PeerState, parse_bird_protocols, parse_frr_summary, peer_key

FIXTURES = Path(__file__).parent / "fixtures" / "bgp"
UP1 = PeerState(established=True, prefixes=1)
DOWN = PeerState(established=False, prefixes=0)


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


# --- FRR --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("frr_summary_established.json", {"10.99.0.2": UP1, "10.77.0.9": DOWN, "10.77.0.10": DOWN, "fd00::2": DOWN}),
        ("frr_summary_peer_down_active.json", {"10.99.0.2": DOWN, "10.77.0.9": DOWN, "10.77.0.10": DOWN, "fd00::2": DOWN}),
        ("frr_summary_admin_shutdown.json", {"10.99.0.2": DOWN, "10.77.0.9": DOWN, "10.77.0.10": DOWN, "fd00::2": DOWN}),
        ("frr_summary_link_down_idle.json", {"10.99.0.2": DOWN, "10.77.0.9": DOWN, "10.77.0.10": DOWN, "fd00::2": DOWN}),
        ("frr_summary_link_down_active.json", {"10.99.0.2": DOWN, "10.77.0.9": DOWN, "10.77.0.10": DOWN, "fd00::2": DOWN}),
        # 10.99.0.2 is in both families (pfxRcd 1 + 0); fd00::2 only under ipv6Unicast
        ("frr_summary_ipv4_ipv6.json", {"10.99.0.2": UP1, "10.77.0.9": DOWN, "10.77.0.10": DOWN, "fd00::2": DOWN}),
        ("frr_summary_no_instance.json", {}),
        ("frr_summary_no_neighbors.json", {}),
    ],
)
def test_frr_summary(fixture: str, expected: dict[str, PeerState]) -> None:
    assert parse_frr_summary(text(fixture)) == expected


def test_frr_states_in_the_captures_are_the_ones_we_think() -> None:
    # Guard the fixtures themselves: the parser's "down" results above must come from these real states.
    def state(fixture: str, afi: str, peer: str) -> str:
        value: str = json.loads(text(fixture))[afi]["peers"][peer]["state"]
        return value

    assert state("frr_summary_admin_shutdown.json", "ipv4Unicast", "10.99.0.2") == "Idle (Admin)"
    assert state("frr_summary_link_down_idle.json", "ipv4Unicast", "10.99.0.2") == "Idle"
    assert state("frr_summary_link_down_active.json", "ipv4Unicast", "10.99.0.2") == "Active"
    assert state("frr_summary_ipv4_ipv6.json", "ipv6Unicast", "10.99.0.2") == "Established"
    assert "fd00::2" not in json.loads(text("frr_summary_ipv4_ipv6.json"))["ipv4Unicast"]["peers"]


def test_frr_sums_prefixes_over_address_families() -> None:
    data = json.loads(text("frr_summary_ipv4_ipv6.json"))
    data["ipv6Unicast"]["peers"]["10.99.0.2"]["pfxRcd"] = 4
    assert parse_frr_summary(json.dumps(data))["10.99.0.2"] == PeerState(True, 5)


def test_frr_established_under_any_family() -> None:
    data = json.loads(text("frr_summary_ipv4_ipv6.json"))
    data["ipv4Unicast"]["peers"]["10.99.0.2"]["state"] = "Idle"
    assert parse_frr_summary(json.dumps(data))["10.99.0.2"] == PeerState(True, 0)


def test_frr_prefixes_of_a_down_peer_read_zero() -> None:
    data = json.loads(text("frr_summary_admin_shutdown.json"))
    data["ipv4Unicast"]["peers"]["10.99.0.2"]["pfxRcd"] = 7  # stale count: not evidence of anything
    assert parse_frr_summary(json.dumps(data))["10.99.0.2"] == DOWN


def _broken_established(mutate: str) -> str:
    data = json.loads(text("frr_summary_established.json"))
    peer = data["ipv4Unicast"]["peers"]["10.99.0.2"]
    if mutate == "no pfxRcd":
        del peer["pfxRcd"]
    elif mutate == "string pfxRcd":
        peer["pfxRcd"] = "1"
    elif mutate == "no state":
        del peer["state"]
    elif mutate == "no peers":
        del data["ipv4Unicast"]["peers"]
    return json.dumps(data)


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(text("frr_summary_text_no_instance.txt"), id="plain text"),
        pytest.param("", id="empty"),
        pytest.param(text("frr_summary_established.json")[:700], id="truncated"),
        pytest.param("[]", id="not an object"),
        pytest.param('{"warning": "something"}', id="not an address family"),
        pytest.param(_broken_established("no pfxRcd"), id="established without pfxRcd"),
        pytest.param(_broken_established("string pfxRcd"), id="pfxRcd not an int"),
        pytest.param(_broken_established("no state"), id="peer without state"),
        pytest.param(_broken_established("no peers"), id="family without peers"),
    ],
)
def test_frr_malformed(output: str) -> None:
    with pytest.raises(MalformedOutput):
        parse_frr_summary(output)


def test_peer_keys_compare_addresses_canonically() -> None:
    assert peer_key("FD00:0::2") == "fd00::2" == peer_key("fd00::2")
    assert peer_key("10.99.0.2") == "10.99.0.2"
    assert peer_key("to_b") == "to_b"  # a BIRD protocol name or an FRR interface name stays as written


# --- BIRD -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("bird_all_established.txt", {"peer_b": UP1, "ghost": DOWN, "peer_off": DOWN}),  # ghost: Connect
        ("bird_all_peer_down_active.txt", {"peer_b": DOWN, "ghost": DOWN, "peer_off": DOWN}),  # start/Active
        ("bird_all_disabled.txt", {"peer_b": DOWN, "ghost": DOWN, "peer_off": DOWN}),  # down/Down
        ("bird_all_two_channels.txt", {"peer_b": UP1, "ghost": DOWN, "peer_off": DOWN}),
        ("bird_one_established.txt", {"peer_b": UP1}),
        ("bird_one_keep_filtered.txt", {"peer_b": UP1}),
        ("bird_one_disabled.txt", {"peer_b": DOWN}),
        ("bird_one_shut_by_peer.txt", {"peer_b": DOWN}),
        ("bird_one_neighbor_lost.txt", {"peer_b": DOWN}),
        ("bird_one_hold_expired.txt", {"peer_b": DOWN}),
        ("bird_one_active_after_error.txt", {"peer_b": DOWN}),
    ],
)
def test_bird_protocols(fixture: str, expected: dict[str, PeerState]) -> None:
    assert parse_bird_protocols(text(fixture)) == expected


def test_bird_non_bgp_protocols_are_not_peers() -> None:
    parsed = parse_bird_protocols(text("bird_all_established.txt"))
    assert "lonet" not in parsed and "device1" not in parsed  # a static protocol has "1 imported" too


def test_bird_sums_imported_routes_over_channels() -> None:
    output = text("bird_all_two_channels.txt").replace(
        "Routes:         0 imported, 0 exported", "Routes:         3 imported, 0 exported"
    )
    assert parse_bird_protocols(output)["peer_b"] == PeerState(True, 4)


@pytest.mark.parametrize(
    "output",
    [
        pytest.param(text("bird_summary_no_details.txt"), id="show protocols without all"),
        pytest.param(text("bird_error_unknown_protocol.txt"), id="birdc error"),
        pytest.param("", id="empty"),
        pytest.param(text("bird_one_established.txt").replace("  BGP state:          Established\n", ""), id="no BGP state"),
        pytest.param(
            text("bird_one_established.txt").replace("peer_b     BGP        ---        up ", "peer_b "), id="short line"
        ),
    ],
)
def test_bird_malformed(output: str) -> None:
    with pytest.raises(MalformedOutput):
        parse_bird_protocols(output)


def test_bird_state_up_needs_bgp_established_too() -> None:
    output = text("bird_one_established.txt").replace("BGP state:          Established", "BGP state:          OpenConfirm")
    assert parse_bird_protocols(output) == {"peer_b": DOWN}
