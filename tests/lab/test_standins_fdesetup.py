"""fdesetup stand-in: FileVault status from the host's state."""

import pytest
from standins_support import run_standin, standin_root, write_state


@pytest.fixture
def host_root():
    with standin_root() as root:
        yield root


def test_fdesetup_status(host_root):
    assert run_standin(host_root, "fdesetup", "status").stdout == "FileVault is Off.\n"
    write_state(host_root, filevault=True)
    result = run_standin(host_root, "fdesetup", "status", as_nobody=True)
    assert (result.returncode, result.stdout) == (0, "FileVault is On.\n")
    assert run_standin(host_root, "fdesetup", "enable").returncode == 1
