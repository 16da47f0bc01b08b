"""dseditgroup stand-in: checkmember and edit on the host's group file."""

import pytest
from standins_support import group_members, run_standin, standin_root


@pytest.fixture
def host_root():
    with standin_root() as root:
        yield root


def dseditgroup(root, *args, **kwargs):
    return run_standin(root, "dseditgroup", *args, **kwargs)


def test_checkmember_yes_and_no(host_root):
    yes = dseditgroup(host_root, "-o", "checkmember", "-m", "admin", "admin")
    assert (yes.returncode, yes.stdout) == (0, "yes admin is a member of admin\n")
    no = dseditgroup(host_root, "-o", "checkmember", "-m", "admin", "wheel")
    assert (no.returncode, no.stdout) == (67, "no admin is NOT a member of wheel\n")


def test_the_primary_group_counts_as_membership(host_root):
    result = dseditgroup(host_root, "-o", "checkmember", "-m", "admin", "staff")
    assert result.returncode == 0


def test_edit_adds_and_removes_a_member(host_root):
    add = ["-o", "edit", "-a", "admin", "-t", "user", "wheel"]
    assert dseditgroup(host_root, *add).returncode == 0
    assert dseditgroup(host_root, *add).returncode == 0
    assert group_members(host_root, "wheel") == ["root", "admin"]
    assert dseditgroup(host_root, "-o", "checkmember", "-m", "admin", "wheel").returncode == 0
    remove = ["-o", "edit", "-d", "admin", "-t", "user", "wheel"]
    assert dseditgroup(host_root, *remove).returncode == 0
    assert group_members(host_root, "wheel") == ["root"]


def test_unknown_group_or_user(host_root):
    result = dseditgroup(host_root, "-o", "checkmember", "-m", "admin", "nosuch")
    assert result.returncode == 64 and result.stderr == "Group not found.\n"
    result = dseditgroup(host_root, "-o", "edit", "-a", "ghost", "-t", "user", "admin")
    assert result.returncode == 67
    assert group_members(host_root, "admin") == ["root", "admin"]


def test_usage_errors(host_root):
    for args in (
        ["-o", "create", "newgroup"],
        ["-o", "edit", "-a", "admin", "-t", "group", "wheel"],
        ["-o", "edit", "-a", "admin", "-d", "admin", "wheel"],
        ["-o", "checkmember", "admin"],
        ["-o", "checkmember", "-m", "admin"],
    ):
        result = dseditgroup(host_root, *args)
        assert result.returncode == 64, args
        assert "Usage: dseditgroup" in result.stderr


def test_edit_needs_root(host_root):
    before = (host_root / "etc/group").read_text()
    result = dseditgroup(
        host_root, "-o", "edit", "-a", "admin", "-t", "user", "wheel", as_nobody=True
    )
    assert result.returncode == 64
    assert "Username and password must be provided." in result.stderr
    assert (host_root / "etc/group").read_text() == before
    check = dseditgroup(host_root, "-o", "checkmember", "-m", "admin", "admin", as_nobody=True)
    assert check.returncode == 0
