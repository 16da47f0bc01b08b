"""sysadminctl stand-in: -addUser and -deleteUser on the host's account files."""

import re

import pytest
from edge_lab.standins import _common
from standins_support import (
    group_members,
    passwd_lines,
    run_standin,
    shadow_hash,
    standin_root,
)

LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} sysadminctl\[\d+:[0-9a-f]+\] (?P<message>.*)$"
)


@pytest.fixture
def host_root():
    with standin_root() as root:
        yield root


def sysadminctl(root, *args, **kwargs):
    return run_standin(root, "sysadminctl", *args, **kwargs)


def log_messages(stderr):
    messages = []
    for line in stderr.splitlines():
        match = LOG_LINE.match(line)
        assert match, f"not an NSLog line: {line!r}"
        messages.append(match["message"])
    return messages


def account_files(root):
    return [(root / "etc" / name).read_text() for name in ("passwd", "group", "shadow")]


def test_add_user_with_password_from_stdin(host_root):
    result = sysadminctl(
        host_root,
        "-addUser",
        "edge_sage_01",
        "-fullName",
        "Sage 01",
        "-password",
        "-",
        stdin="correct horse\n",
    )
    assert result.returncode == 0
    assert log_messages(result.stderr) == ["Creating user record…", "Assigning UID: 502 GID: 20"]
    assert "correct horse" not in result.stderr + result.stdout
    assert "edge_sage_01:x:502:20:Sage 01:/Users/edge_sage_01:/bin/zsh" in passwd_lines(host_root)
    hashed = shadow_hash(host_root, "edge_sage_01")
    assert hashed.startswith("$") and _common.password_matches("correct horse", hashed)
    assert not _common.password_matches("wrong horse", hashed)
    assert group_members(host_root, "staff") == ["root", "edge_sage_01"]
    assert group_members(host_root, "admin") == ["root", "admin"]
    # The home folder is createhomedir's job.
    assert not (host_root / "Users" / "edge_sage_01").exists()


def test_add_user_with_every_option(host_root):
    result = sysadminctl(
        host_root,
        "-addUser",
        "edge_ops",
        "-UID",
        "620",
        "-GID",
        "80",
        "-shell",
        "/bin/bash",
        "-home",
        "/Users/ops",
        "-admin",
        "-password",
        "s3cret",
    )
    assert result.returncode == 0
    assert "edge_ops:x:620:80:edge_ops:/Users/ops:/bin/bash" in passwd_lines(host_root)
    assert "edge_ops" in group_members(host_root, "admin")
    assert _common.password_matches("s3cret", shadow_hash(host_root, "edge_ops"))


def test_next_free_uid_skips_taken_ids(host_root):
    sysadminctl(host_root, "-addUser", "one", "-UID", "502")
    sysadminctl(host_root, "-addUser", "two")
    assert any(line.startswith("two:x:503:") for line in passwd_lines(host_root))


def test_without_password_the_account_has_none(host_root):
    result = sysadminctl(host_root, "-addUser", "edge_sage_02")
    assert result.returncode == 0
    assert any("No clear text password" in m for m in log_messages(result.stderr))
    assert shadow_hash(host_root, "edge_sage_02") == "*"


def test_failures_exit_zero_with_the_error_on_stderr(host_root):
    before = account_files(host_root)
    taken_name = sysadminctl(host_root, "-addUser", "admin", "-password", "x")
    assert taken_name.returncode == 0
    assert "eDSRecordAlreadyExists" in log_messages(taken_name.stderr)[-1]
    taken_uid = sysadminctl(host_root, "-addUser", "edge_sage_01", "-UID", "501")
    assert taken_uid.returncode == 0
    assert log_messages(taken_uid.stderr)[-1] == "### Error: UID 501 is already in use by admin."
    missing = sysadminctl(host_root, "-deleteUser", "nobody_here")
    assert missing.returncode == 0 and "eDSRecordNotFound" in missing.stderr
    assert account_files(host_root) == before


def test_usage_errors_exit_1_and_change_nothing(host_root):
    before = account_files(host_root)
    for args in (
        ["-resetPasswordFor", "admin"],
        ["-addUser", "x", "-roleAccount"],
        ["-addUser", "x", "-UID", "abc"],
        ["-addUser", "bad:name"],
        ["-addUser", "x", "-fullName", "a,b"],
        ["-deleteUser", "admin", "-secure", "-keepHome"],
    ):
        result = sysadminctl(host_root, *args)
        assert result.returncode == 1, args
        assert "Usage: sysadminctl" in result.stderr
    assert account_files(host_root) == before


def test_delete_user_removes_record_and_home(host_root):
    sysadminctl(host_root, "-addUser", "edge_sage_01", "-password", "x")
    assert run_standin(host_root, "createhomedir", "-c", "-u", "edge_sage_01").returncode == 0
    result = sysadminctl(host_root, "-deleteUser", "edge_sage_01")
    assert result.returncode == 0
    assert log_messages(result.stderr) == [
        "Deleting record for edge_sage_01",
        "Deleting home directory at /Users/edge_sage_01",
    ]
    assert not any(line.startswith("edge_sage_01:") for line in passwd_lines(host_root))
    assert "edge_sage_01" not in group_members(host_root, "staff")
    assert not (host_root / "Users" / "edge_sage_01").exists()


def test_delete_user_keep_home(host_root):
    sysadminctl(host_root, "-addUser", "edge_sage_01")
    run_standin(host_root, "createhomedir", "-c", "-u", "edge_sage_01")
    assert sysadminctl(host_root, "-deleteUser", "edge_sage_01", "-keepHome").returncode == 0
    assert (host_root / "Users" / "edge_sage_01" / "Library").is_dir()


def test_non_root_is_refused(host_root):
    before = account_files(host_root)
    result = sysadminctl(host_root, "-addUser", "edge_sage_01", "-password", "x", as_nobody=True)
    assert result.returncode == 0
    assert "eDSPermissionError" in log_messages(result.stderr)[-1]
    result = sysadminctl(host_root, "-deleteUser", "admin", as_nobody=True)
    assert "eDSPermissionError" in result.stderr
    assert account_files(host_root) == before
