"""``--sweep KEY=v1,v2``: parsing, the grid of variants, and validation of each variant as a whole profile."""

from __future__ import annotations

from typing import Any

import pytest

from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.simulate.sweep import Axis, SweepError, parse_axes, parse_axis, variants

BASE: dict[str, Any] = {
    "name": "prod",
    "version": 1,
    "signals": {"primary_http": {"max_age": "5s"}},
    "rules": [{"name": "primary_down", "signal": "primary_http", "direction": "below", "trip": 0.5, "for": "3s"}],
    "chains": {
        "cutover": [{"id": "capacity", "module": "compute/capacity@v1", "hourly_cost_usd": 0.5}],
        "failback": [{"id": "capacity", "module": "compute/capacity@v1"}],
    },
}


def test_parse_axis() -> None:
    assert parse_axis("rules.0.for=5s, 10s,30s") == Axis("rules.0.for", ("5s", "10s", "30s"))
    assert parse_axis("rules.0.for=5s").path == ("rules", "0", "for")


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["cooldown"], "--sweep 'cooldown': expected KEY=VALUE1,VALUE2,... with KEY a dotted path into the profile"),
        (["=5m"], "--sweep '=5m': expected KEY=VALUE1,VALUE2,... with KEY a dotted path into the profile"),
        (["rules..for=5s"], "--sweep 'rules..for=5s': 'rules..for' has an empty path element"),
        (["cooldown=5m,,15m"], "--sweep 'cooldown=5m,,15m': empty value (values are separated by single commas)"),
        (["cooldown=5m", "cooldown=15m"], "--sweep cooldown: given twice; list every value in one option"),
    ],
)
def test_malformed_sweeps_say_what_is_wrong(specs: list[str], message: str) -> None:
    with pytest.raises(SweepError) as caught:
        parse_axes(specs)
    assert str(caught.value) == message


def test_the_grid_is_the_cartesian_product_in_the_order_given() -> None:
    axes = parse_axes(["rules.0.for=5s,30s", "cooldown=5m,15m"])
    grid = variants(BASE, axes, DRIVER_MODULES)
    assert [label for label, _ in grid] == [
        {"rules.0.for": "5s", "cooldown": "5m"},
        {"rules.0.for": "5s", "cooldown": "15m"},
        {"rules.0.for": "30s", "cooldown": "5m"},
        {"rules.0.for": "30s", "cooldown": "15m"},
    ]
    assert [(p.rules[0].for_, p.cooldown) for _, p in grid] == [(5, 300), (5, 900), (30, 300), (30, 900)]
    assert BASE["rules"][0]["for"] == "3s"  # the base data is never changed


def test_keys_may_name_list_items_create_missing_mappings_and_take_yaml_scalars() -> None:
    axes = parse_axes(
        [
            "rules.primary_down.unknown=breach",
            "chains.cutover.capacity.hourly_cost_usd=1.25",
            "failback.automatic=true",  # `failback` is absent from BASE: it is created
        ]
    )
    [(_, profile)] = variants(BASE, axes, DRIVER_MODULES)
    assert profile.rules[0].unknown.value == "breach"
    assert profile.hourly_cost() == 1.25
    assert profile.failback.automatic is True


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rules.0.for=soon", 'variant rules.0.for=soon: rules[0].for: must be a duration like "30s"'),
        (
            "rules.0.trip=high",
            "variant rules.0.trip=high: rules[0].trip: must be a valid number, unable to parse string as a number",
        ),
        ("cooldwn=5m", "variant cooldwn=5m: cooldwn: unknown key"),
        (
            "rules.0.signal=wan_loss",
            "variant rules.0.signal=wan_loss: rules[0].signal: unknown signal 'wan_loss'; declare it under signals",
        ),
        ("rules.3.for=5s", "rules has no item 3 (it has 1)"),
        ("rules.nope.for=5s", "rules has no item named 'nope'"),
        ("version.major=2", "--sweep version.major: version is a value, not a mapping or a list"),
        ("cooldown=[5m", "--sweep cooldown=[5m: not a YAML value"),
    ],
)
def test_every_variant_is_validated_as_a_profile(spec: str, message: str) -> None:
    with pytest.raises(SweepError) as caught:
        variants(BASE, parse_axes([spec]), DRIVER_MODULES)
    assert str(caught.value) == message
