"""xcode-select stand-in: the Command Line Tools as the host's state has them."""

import pytest
from standins_support import read_state, run_standin, standin_root, write_state


@pytest.fixture
def host_root():
    with standin_root() as root:
        yield root


def test_xcode_select_with_and_without_the_tools(host_root):
    installed = run_standin(host_root, "xcode_select", "-p")
    assert (installed.returncode, installed.stdout) == (0, "/Library/Developer/CommandLineTools\n")
    already = run_standin(host_root, "xcode_select", "--install")
    assert already.returncode == 1 and "already installed" in already.stderr

    write_state(host_root, clt=False)
    missing = run_standin(host_root, "xcode_select", "--print-path")
    assert missing.returncode == 2
    assert missing.stderr.startswith(
        "xcode-select: error: unable to get active developer directory."
    )
    asked = run_standin(host_root, "xcode_select", "--install")
    assert asked.returncode == 0
    assert asked.stderr == (
        "xcode-select: note: install requested for command line developer tools\n"
    )
    assert read_state(host_root)["clt"] is False
    assert run_standin(host_root, "xcode_select", "--switch", "/x").returncode == 1
