"""The driver declarations are the one source of truth: the registry, the config schema and check-config agree."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from hybridops_daemon.config.loader import check_config, json_schemas, load_daemon_config
from hybridops_daemon.config.models import LaneConfig, LaneDrivers
from hybridops_daemon.drivers.declarations import DECLARATIONS
from hybridops_daemon.drivers.registry import DRIVER_MODULES, build_drivers
from tests.unit.test_config_loader import PROFILE

REPO = Path(__file__).resolve().parents[2]
DECLARED = [declared.name for declared in DECLARATIONS]


def tree(root: Path, driver: str, drivers: str = "{}") -> Path:
    (root / "prod.yaml").write_text(PROFILE.format(name="prod").replace("driver: sandbox", f"driver: {driver}"))
    config = root / "node.yaml"
    config.write_text(f"node: edge01\nstate_dir: var\nlanes:\n  prod: {{profile: prod.yaml, drivers: {drivers}}}\n")
    return config


def test_every_declared_driver_is_in_the_registry_and_the_schema_and_nothing_else_is() -> None:
    assert len(set(DECLARED)) == len(DECLARED)
    assert list(DRIVER_MODULES) == DECLARED
    assert all(DRIVER_MODULES[declared.name] == declared.modules and declared.modules for declared in DECLARATIONS)
    assert list(LaneDrivers.model_fields) == DECLARED
    section = json_schemas()["daemon_config"]["$defs"]["LaneDrivers"]
    assert list(section["properties"]) == DECLARED and section["additionalProperties"] is False
    for declared in DECLARATIONS:
        field = LaneDrivers.model_fields[declared.name]
        assert field.annotation == (declared.config if declared.always else declared.config | None)
        assert field.is_required() is False  # a lane configures only the drivers it uses


def test_check_config_rejects_a_step_bound_to_an_undeclared_driver(tmp_path: Path) -> None:
    _, _, errors = check_config(tree(tmp_path, "nonesuch"), DRIVER_MODULES)

    unknown = f"unknown driver 'nonesuch'; known: {', '.join(sorted(DECLARED))}"
    assert [(error.path, error.message) for error in errors] == [
        ("chains.cutover[0].driver", unknown),
        ("chains.failback[0].driver", unknown),
    ]


def test_check_config_rejects_a_lane_configuring_an_undeclared_driver(tmp_path: Path) -> None:
    _, _, errors = check_config(tree(tmp_path, "sandbox", "{nonesuch: {}}"), DRIVER_MODULES)

    allowed = f"unknown key (allowed: {', '.join(DECLARED)})"
    assert [(error.path, error.message) for error in errors] == [("lanes.prod.drivers.nonesuch", allowed)]


def test_a_configured_driver_must_run_the_steps_module(tmp_path: Path) -> None:
    _, _, errors = check_config(tree(tmp_path, "ansible", "{ansible: {packs: {}}}"), DRIVER_MODULES)

    assert [(error.path, error.message) for error in errors] == [
        ("lanes.prod.drivers.ansible.packs", f"profile prod@v1 step {chain}.fip: no ansible pack bound to network/floating-ip@v1")
        for chain in ("cutover", "failback")
    ]
    _, _, errors = check_config(tree(tmp_path, "ansible"), DRIVER_MODULES)
    assert [error.message for error in errors] == [
        f"profile prod@v1 step {chain}.fip uses driver 'ansible', not configured here" for chain in ("cutover", "failback")
    ]


def test_build_drivers_builds_exactly_the_lanes_configured_drivers(tmp_path: Path) -> None:
    config = load_daemon_config(tree(tmp_path, "sandbox", "{rfc2136: {server: 127.0.0.1}, ansible: {packs_dir: packs}}"))
    lane: LaneConfig = config.lanes["prod"]

    built = build_drivers("prod", lane)

    assert list(built) == ["sandbox", "rfc2136", "ansible"]
    assert all(driver.name == name for name, driver in built.items())
    # Paths resolved by each driver's config: relative to the config file, defaults under the node's state_dir.
    assert lane.drivers.configured()["ansible"].packs_dir == tmp_path / "packs"  # type: ignore[attr-defined]
    assert lane.drivers.configured()["sandbox"].world == tmp_path / "var" / "world-prod.json"  # type: ignore[attr-defined]


def test_checking_a_node_without_cloud_drivers_imports_no_cloud_sdk() -> None:
    # check-config and the demo stay fast: a driver's SDK loads only when a lane configures the driver.
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from hybridops_daemon.config.loader import check_config
        from hybridops_daemon.drivers.registry import DRIVER_MODULES, build_drivers
        config, _, errors = check_config(Path("config/demo.yaml"), DRIVER_MODULES)
        assert not errors and config is not None, errors
        for name, lane in config.lanes.items():
            build_drivers(name, lane)
        print(sorted(m for m in ("hcloud", "google.cloud", "pynetbox", "psycopg") if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
