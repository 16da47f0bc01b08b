"""pmset stand-in: power settings of the host's state, root-only changes."""

import pytest
from standins_support import read_state, run_standin, standin_root, write_state


@pytest.fixture
def host_root():
    with standin_root() as root:
        yield root


def pmset_values(stdout):
    values = {}
    for line in stdout.splitlines():
        if line.startswith(" "):
            key, _, value = line[1:].rpartition(" ")
            values[key.strip()] = value
    return values


def test_pmset_g_fresh_mac_mini(host_root):
    result = run_standin(host_root, "pmset", "-g")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[:2] == ["System-wide power settings:", "Currently in use:"]
    assert " sleep                1" in lines
    assert " autorestart          0" in lines
    assert " womp                 1" in lines
    assert " Sleep On Power Button 1" in lines


def test_pmset_changes_settings_as_root(host_root):
    result = run_standin(host_root, "pmset", "-a", "sleep", "0", "autorestart", "1")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert read_state(host_root)["pmset"] == {"sleep": 0, "autorestart": 1}
    custom = run_standin(host_root, "pmset", "-g", "custom")
    assert custom.stdout.splitlines()[0] == "AC Power:"
    values = pmset_values(custom.stdout)
    assert (values["sleep"], values["autorestart"], values["displaysleep"]) == ("0", "1", "10")
    assert run_standin(host_root, "pmset", "-c", "womp", "0").returncode == 0
    assert pmset_values(run_standin(host_root, "pmset", "-g").stdout)["womp"] == "0"


def test_pmset_refuses_bad_settings_and_non_root(host_root):
    write_state(host_root, pmset={"sleep": 1, "autorestart": 0})
    for args in (["-a", "sleep"], ["-a", "warp", "1"], ["-a", "womp", "2"], ["-g", "batt"]):
        result = run_standin(host_root, "pmset", *args)
        assert result.returncode == 1, args
        assert "pmset" in result.stderr
    refused = run_standin(host_root, "pmset", "-a", "sleep", "0", as_nobody=True)
    assert refused.returncode == 1 and "must be run as root" in refused.stderr
    assert read_state(host_root)["pmset"] == {"sleep": 1, "autorestart": 0}
    assert run_standin(host_root, "pmset", "-g", as_nobody=True).returncode == 0
