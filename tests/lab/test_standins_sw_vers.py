"""sw_vers stand-in: the macOS version from the host's state."""

import pytest
from standins_support import run_standin, standin_root, write_state


@pytest.fixture
def host_root():
    with standin_root() as root:
        yield root


def test_sw_vers_fresh_host(host_root):
    result = run_standin(host_root, "sw_vers")
    assert result.returncode == 0
    assert result.stdout == (
        "ProductName:\t\tmacOS\nProductVersion:\t\t14.6.1\nBuildVersion:\t\t23G93\n"
    )


def test_sw_vers_single_values_from_state(host_root):
    write_state(host_root, macos={"ProductVersion": "15.1", "BuildVersion": "24B83"})
    assert run_standin(host_root, "sw_vers", "-productVersion").stdout == "15.1\n"
    assert run_standin(host_root, "sw_vers", "-buildVersion").stdout == "24B83\n"
    assert run_standin(host_root, "sw_vers", "-productName").stdout == "macOS\n"
    bad = run_standin(host_root, "sw_vers", "-kernel")
    assert bad.returncode == 1 and bad.stderr.startswith("Usage: sw_vers")
