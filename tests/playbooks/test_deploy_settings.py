"""deploy.yml refuses bad roll-out settings on the controller, before any Mac is contacted.

The inventory's Macs point at a closed port: a test that reached them would fail differently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "deploy.yml"
MISSING_WHEEL = "/nonexistent/edge_relay-0.2.0-py3-none-any.whl"


@pytest.fixture(scope="module")
def inventory(tmp_path_factory):
    path = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    hosts = {f"mini-0{n}": {"ansible_host": "127.0.0.1", "ansible_port": 1} for n in (1, 2)}
    path.write_text(json.dumps({"mac_minis": {"hosts": hosts}}))
    return path


def deploy(inventory, extra, wheel=MISSING_WHEEL):
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory)]
    argv += [str(PLAYBOOK), "-e", f"relay_wheel={wheel}", "-e", json.dumps(extra)]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"deploy_health_timeout": "x"}, "deploy_health_timeout must be a number of seconds"),
        ({"deploy_health_timeout": -1}, "deploy_health_timeout must be a number of seconds"),
        ({"deploy_drain_timeout": 0}, "deploy_drain_timeout must be a number of seconds above 0"),
        ({"deploy_health_stable_for": "soon"}, "deploy_health_stable_for must be a number"),
        ({"deploy_serial": "abc"}, "deploy_serial must be a batch size"),
        ({"deploy_serial": [1, "0%"]}, "deploy_serial must be a batch size"),
        ({"deploy_serial": []}, "deploy_serial must be a batch size"),
        ({"deploy_max_fail_percentage": 200}, "deploy_max_fail_percentage must be a whole number"),
        ({"deploy_releases_keep": 0}, "deploy_releases_keep must be a whole number, at least 1,"),
        ({"deploy_hosts": "mini-09"}, "deploy_hosts mini-09 names no Mac of the inventory"),
    ],
)
def test_bad_settings_stop_before_any_mac(inventory, extra, message):
    rc, output = deploy(inventory, extra)
    assert rc != 0
    assert message in output
    assert "No Mac was touched" in output
    assert "mini-01" not in output.split("PLAY RECAP")[-1]


@pytest.mark.parametrize(
    "extra",
    [{}, {"deploy_serial": 2}, {"deploy_serial": "50%"}, {"deploy_serial": [1, 3, "100%"]}],
)
def test_good_settings_pass_on_to_the_release_check(inventory, extra):
    rc, output = deploy(inventory, extra)
    assert rc != 0
    assert "is missing or not a wheel" in output
    assert "must be" not in output


def relay_wheel(folder: Path, named: str, holds: str) -> Path:
    """A wheel of the relay's shape: its file name says one version, its dist-info another."""
    path = folder / f"edge_relay-{named}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("edge_relay/__init__.py", f'__version__ = "{holds}"\n')
        wheel.writestr(
            f"edge_relay-{holds}.dist-info/METADATA", f"Name: edge-relay\nVersion: {holds}\n"
        )
    return path


def test_a_renamed_wheel_stops_before_any_mac(inventory, tmp_path):
    rc, output = deploy(inventory, {}, relay_wheel(tmp_path, named="0.3.0", holds="0.2.0"))
    assert rc != 0
    assert "is named for version 0.3.0 but holds edge_relay 0.2.0" in output
    assert "No Mac was touched" in output
    assert "mini-01" not in output.split("PLAY RECAP")[-1]


def test_a_wheel_true_to_its_name_passes_the_release_check(inventory, tmp_path):
    rc, output = deploy(inventory, {}, relay_wheel(tmp_path, named="0.3.0", holds="0.3.0"))
    assert "No Mac was touched" not in output
    assert "rolling out release 0.3.0-" in output


def test_a_limit_without_the_controller_stops_with_what_to_give(inventory):
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory)]
    argv += [str(PLAYBOOK), "--limit", "mini-01", "-e", f"relay_wheel={MISSING_WHEEL}"]
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "name localhost too (--limit 'mini-01,localhost')" in output, output
    assert "Nothing was changed on mini-01" in output
    assert "UNREACHABLE" not in output
