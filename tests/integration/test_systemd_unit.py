"""The shipped systemd unit and its sysusers.d/tmpfiles.d snippets, checked with systemd's own tools (Debian package
``systemd``; none of them needs a running systemd), and the unit's agreement with the production-like example config."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from hybridops_daemon.config.loader import check_config
from hybridops_daemon.config.models import LocalLeaseConfig
from hybridops_daemon.control import server as control_server
from hybridops_daemon.drivers.registry import DRIVER_MODULES
from hybridops_daemon.journal.store import BUSY_TIMEOUT_S
from hybridops_daemon.secrets import referenced
from tests.testbed.process import require

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "hybridops-daemon.service"
SYSUSERS = REPO / "systemd" / "hybridops.sysusers.conf"
TMPFILES = REPO / "systemd" / "hybridops.tmpfiles.conf"
SYSTEMD_README = REPO / "systemd" / "README.md"
EXAMPLE = REPO / "config" / "edge01.example.yaml"
MAX_EXPOSURE = 2.0
CREDENTIALS_SOURCE = Path("/etc/hybridops/credentials")
# Where Debian installs the units that the unit's dependencies (sysinit.target, network-online.target, ...) name.
HOST_UNITS = Path("/usr/lib/systemd/system")

# What systemd-analyze still counts against the unit, each one explained in systemd/README.md ("Hardening").
EXPOSED_ON_PURPOSE = [
    "PrivateNetwork=",
    "IPAddressDeny=",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "RestrictAddressFamilies=~AF_UNIX",
    "RestrictAddressFamilies=~AF_NETLINK",
    "PrivateUsers=",
    "SystemCallFilter=~@privileged",
    "ProcSubset=",
    "SupplementaryGroups=",
    "UMask=",
    "DeviceAllow=",
    "RootDirectory=/RootImage=",
]

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """systemd's unit syntax: [Section], Key=value, repeated keys kept in order, # and ; comments, \\ continuations."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"a setting outside any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=value line: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key, [])
    assert len(values) == 1, f"{key}= is set {len(values)} times in {UNIT.name}: {values}"
    return values[0]


def seconds(span: str) -> float:
    """A systemd time span as the unit writes them: "45s", "5min", "1min 30s", "500ms", or bare seconds."""
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and all(unit in units or unit == "" for _, unit in parts), f"not a time span: {span!r}"
    return sum(float(number) * units.get(unit, 1.0) for number, unit in parts)


def command(line: str) -> list[str]:
    """An Exec*= line as argv, without systemd's prefixes (-, @, :, +, !)."""
    return shlex.split(line.lstrip("-@:+!"))


def run(argv: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, timeout=60)


# --------------------------------------------------------------------------------------------- systemd-analyze verify


def verify_root(root: Path, unit_text: str) -> Path:
    """A file-system root for ``systemd-analyze verify --root``: the unit under /etc/systemd/system, the host's
    units (the targets it depends on) and a stub for every program it runs: verify wants each to be executable,
    and the real ones exist only once the README's install steps have put them under /opt/hybridops."""
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / UNIT.name).write_text(unit_text)
    shutil.copytree(HOST_UNITS, root / HOST_UNITS.relative_to("/"), symlinks=True)
    for key in ("ExecStartPre", "ExecStart", "ExecReload"):
        for line in parse_unit(unit_text)["Service"].get(key, []):
            stub = root / command(line)[0].lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    return root


def analyze_verify(root: Path) -> subprocess.CompletedProcess[str]:
    # --man=no: Documentation= links are not looked up; --generators=no: no generator runs against the stub root.
    return run([require("systemd-analyze"), "verify", f"--root={root}", "--man=no", "--generators=no", UNIT.name])


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    done = analyze_verify(verify_root(tmp_path, UNIT.read_text()))
    # verify exits 0 on an unknown key or a value it cannot parse (it only warns): any output is a failure.
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done.stdout + done.stderr


def test_verify_as_run_here_reports_a_misspelt_setting(tmp_path: Path) -> None:
    # The check above is only worth something if this set-up makes verify read the unit: a typo must show.
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    done = analyze_verify(verify_root(tmp_path, broken))
    assert "Unknown key 'ProtectSytem'" in done.stderr, done.stdout + done.stderr


def test_the_programs_the_unit_runs_outside_the_venv_exist_on_debian() -> None:
    settings = service()
    programs = {command(line)[0] for key in ("ExecStartPre", "ExecStart", "ExecReload") for line in settings.get(key, [])}
    outside = sorted(program for program in programs if not program.startswith("/opt/hybridops/"))
    assert outside == ["/bin/kill"], outside
    assert all(os.access(program, os.X_OK) for program in outside), outside


# --------------------------------------------------------------------------------------------- systemd-analyze security


def exposure(unit_file: Path) -> tuple[float, str, list[str]]:
    """The overall exposure level, its label, and the settings it counts against the unit (the ✗ lines)."""
    done = run([require("systemd-analyze"), "security", "--offline=yes", "--no-pager", unit_file])
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(rf"Overall exposure level for {re.escape(unit_file.name)}: (\d+\.\d+) (\w+)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    exposed = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("✗")]
    return float(found.group(1)), found.group(2), exposed


def test_security_exposure_is_2_or_better(capsys: pytest.CaptureFixture[str]) -> None:
    score, label, exposed = exposure(UNIT)
    with capsys.disabled():
        print(f"\n[systemd] exposure {score} {label} ({UNIT.relative_to(REPO)}; systemd-analyze security --offline=yes)")
    assert score <= MAX_EXPOSURE, f"exposure {score} {label} > {MAX_EXPOSURE}; counted against the unit: {exposed}"
    # Even under 2.0, dropping a setting (PrivateTmp=, say) must not go unnoticed: only what systemd/README.md
    # explains may stay exposed.
    assert sorted(exposed) == sorted(EXPOSED_ON_PURPOSE), f"exposed now: {exposed}"


def readme_block(header: str) -> str:
    """The fenced block of systemd/README.md whose first line is ``header``: the drop-in as an operator copies it."""
    blocks: list[str] = re.findall(r"```ini\n(.*?)```", SYSTEMD_README.read_text(), flags=re.DOTALL)
    matching = [block for block in blocks if block.startswith(header + "\n")]
    assert len(matching) == 1, f"no single ```ini block starting with {header!r} in {SYSTEMD_README}"
    return matching[0]


def test_the_documented_cap_net_admin_opt_in_grants_it_and_stays_at_2_or_better(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    drop_in = readme_block("# /etc/systemd/system/hybridops-daemon.service.d/net-admin.conf")
    combined = tmp_path / UNIT.name  # a drop-in's settings apply after the unit's, as if appended
    combined.write_text(UNIT.read_text() + "\n" + drop_in)

    score, label, exposed = exposure(combined)
    with capsys.disabled():
        print(f"\n[systemd] exposure {score} {label} with the CAP_NET_ADMIN drop-in of systemd/README.md")
    # The drop-in takes effect, and grants that one capability and no other.
    assert [setting for setting in exposed if setting.startswith("CapabilityBoundingSet")] == [
        "CapabilityBoundingSet=~CAP_NET_ADMIN"
    ]
    assert score <= MAX_EXPOSURE, f"exposure {score} {label}; counted against the unit: {exposed}"
    done = analyze_verify(verify_root(tmp_path / "root", combined.read_text()))
    assert (done.returncode, done.stderr) == (0, ""), done.stderr


# --------------------------------------------------------------------------------------------- sysusers.d, tmpfiles.d


def test_sysusers_and_tmpfiles_create_the_user_and_the_directories(tmp_path: Path) -> None:
    # Both tools really run, against an empty root: sysusers writes its passwd and group, tmpfiles resolves the
    # owners from them and creates the directories there.
    for folder in ("etc", "usr/lib/sysusers.d", "usr/lib/tmpfiles.d"):
        (tmp_path / folder).mkdir(parents=True)
    shutil.copy(SYSUSERS, tmp_path / "usr/lib/sysusers.d/hybridops.conf")
    shutil.copy(TMPFILES, tmp_path / "usr/lib/tmpfiles.d/hybridops.conf")

    users = run([require("systemd-sysusers"), f"--root={tmp_path}"])
    assert users.returncode == 0 and "Failed" not in users.stderr, users.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()}
    _, _, uid, gid, _, home, shell = passwd["hybridops"]
    assert 0 < int(uid) < 1000, f"hybridops is not a system user: uid {uid}"
    assert groups["hybridops"][2] == gid, "the user's primary group is not hybridops"
    assert (home, shell) == ("/", "/usr/sbin/nologin")
    assert "frrvty" in groups, "the unit's SupplementaryGroups=frrvty would not resolve on a node without FRR"

    files = run([require("systemd-tmpfiles"), "--create", f"--root={tmp_path}"])
    assert files.returncode == 0 and files.stderr == "", files.stderr
    expected = {
        "var/lib/hybridops": (0o750, int(uid), int(gid)),
        "run/hybridops": (0o750, int(uid), int(gid)),
        "etc/hybridops/credentials": (0o700, 0, 0),
    }
    for path, (mode, owner, group) in expected.items():
        info = (tmp_path / path).stat()
        assert stat.S_ISDIR(info.st_mode), path
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, owner, group), path


# --------------------------------------------------------------------------------------------- unit ↔ example config


def test_the_unit_agrees_with_the_example_config() -> None:
    settings = service()
    config_path = Path(command(one(settings, "ExecStart"))[-1])
    assert command(one(settings, "ExecStart")) == ["/opt/hybridops/venv/bin/hyops-daemon", "run", "--config", str(config_path)]
    check = ["/opt/hybridops/venv/bin/hyops-daemon", "check-config", str(config_path)]
    assert command(one(settings, "ExecStartPre")) == check  # a bad config never starts
    assert [command(line) for line in settings["ExecReload"]] == [check, ["/bin/kill", "-HUP", "$MAINPID"]]

    config, profiles, errors = check_config(EXAMPLE, DRIVER_MODULES)
    assert config is not None and not errors, [str(error) for error in errors]

    # Everything the daemon writes lies in the two directories ProtectSystem=strict leaves writable.
    state_dir = Path("/var/lib") / one(settings, "StateDirectory")
    runtime_dir = Path("/run") / one(settings, "RuntimeDirectory")
    assert config.state_dir == state_dir
    assert config.journal_path.parent == state_dir
    # The example leads on etcd (no lease file); a local lease file would sit in the state directory.
    assert config.lease.type == "etcd"
    local = config.model_copy(update={"lease": LocalLeaseConfig()}).resolved(Path("/"))
    assert local.lease.type == "local" and local.lease.path is not None and local.lease.path.parent == state_dir
    assert config.socket_path.parent == runtime_dir
    assert one(settings, "RuntimeDirectoryMode") == one(settings, "StateDirectoryMode") == "0750"
    # The daemon sets the socket's group; without CAP_CHOWN that must be a group it runs with.
    assert config.control.group in {one(settings, "Group"), *one(settings, "SupplementaryGroups").split()}

    # Every secret the config and its profiles name is a LoadCredential= of the same name, and nothing more:
    # a missing credential file fails the start, and an environment variable would not be set under the unit.
    refs = [*referenced(config), *(ref for profile in profiles.values() for ref in referenced(profile))]
    assert refs, "the example config names no secrets: this check would prove nothing"
    assert not [path for path, ref in refs if ref.env is not None], "secrets by {env: ...} are not set under the unit"
    named = {str(ref.file) for _, ref in refs if ref.file is not None and not ref.file.is_absolute()}
    credentials = dict(line.split(":", 1) for line in settings["LoadCredential"])
    assert set(credentials) == named
    assert {name: Path(source) for name, source in credentials.items()} == {name: CREDENTIALS_SOURCE / name for name in named}

    # systemd stops waiting after TimeoutStopSec and kills: that must outlast the daemon's own drain (chains get
    # shutdown_grace, then the control socket may take its in-flight grace plus two I/O bounds to close).
    drain = config.shutdown_grace + control_server._SHUTDOWN_GRACE_S + 2 * control_server._IO_TIMEOUT_S
    assert seconds(one(settings, "TimeoutStopSec")) > drain


def test_the_unit_keeps_the_daemon_s_systemd_contract() -> None:
    settings = service()
    # READY/STATUS/WATCHDOG come from the main process (sdnotify.py); systemd must listen to it, and only to it.
    assert (one(settings, "Type"), one(settings, "NotifyAccess")) == ("notify", "main")
    # The loop pings every WatchdogSec/2, and may wait up to the journal's busy timeout in a SQLite write: a
    # healthy loop must still ping within WatchdogSec.
    assert seconds(one(settings, "WatchdogSec")) / 2 > BUSY_TIMEOUT_S
    assert one(settings, "Restart") == "on-failure"
    assert one(settings, "KillMode") == "mixed"  # SIGTERM to the daemon alone: it drains, then ends its children
    assert (one(settings, "User"), one(settings, "Group")) == ("hybridops", "hybridops")
    assert one(settings, "UMask") == "0027"
