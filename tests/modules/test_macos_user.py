"""archety.edge.macos_user against a Mac's directory tools as they answer on macOS 14."""

import copy
from unittest import mock

import pytest
from ansible_collections.archety.edge.plugins.modules import macos_user
from macos_fakes import FakeDirectory
from module_support import run_module

NEW_SHARD = {"name": "edge_sage_01", "full_name": "Edge sage-01", "password": "s3cret pass"}


def run(directory, check_mode=False, **args):
    # The module looks for a user's home folder on the Mac's disk; here the fake keeps them.
    homes = getattr(directory, "home_exists", lambda path: True)
    with mock.patch.object(macos_user, "home_exists", homes):
        return run_module(macos_user.main, args, directory, check_mode=check_mode, diff=True)


def test_creates_hidden_user_with_home_then_rerun_changes_nothing():
    mac = FakeDirectory()
    result = run(mac, **NEW_SHARD)

    assert result["changed"] is True
    assert result["user"] == {
        "name": "edge_sage_01",
        "uid": 502,
        "gid": 20,
        "full_name": "Edge sage-01",
        "home": "/Users/edge_sage_01",
        "shell": "/bin/zsh",
        "hidden": True,
        "admin": False,
    }
    assert mac.passwords["edge_sage_01"] == "s3cret pass"
    assert "edge_sage_01" in mac.homes
    assert result["commands"] == [
        "/usr/sbin/sysadminctl -addUser edge_sage_01 -fullName 'Edge sage-01' -shell /bin/zsh"
        " -home /Users/edge_sage_01 -password -",
        "/usr/sbin/createhomedir -c -u edge_sage_01",
        "/usr/sbin/dscl . -create /Users/edge_sage_01 IsHidden 1",
    ]
    assert result["diff"]["before"] == {}

    again = run(mac, **NEW_SHARD)
    assert again["changed"] is False
    assert again["commands"] == []
    assert again["user"] == result["user"]


def test_password_never_reaches_a_command_line_or_the_result():
    mac = FakeDirectory()
    result = run(mac, **NEW_SHARD)
    for argv in mac.calls:
        assert "s3cret pass" not in argv
    assert "s3cret pass" not in repr(result)


def test_check_mode_reports_the_commands_and_creates_nothing():
    mac = FakeDirectory()
    result = run(mac, check_mode=True, uid=510, **NEW_SHARD)

    assert result["changed"] is True
    assert mac.users == {}
    assert result["commands"][0].endswith(
        "-UID 510 -shell /bin/zsh -home /Users/edge_sage_01 -password -"
    )
    assert result["user"]["uid"] == 510
    assert all(call[0].endswith(("dscl", "dseditgroup")) for call in mac.calls)
    assert all(call[1] in (".", "-o") and "-create" not in call for call in mac.calls)


def test_sysadminctl_failure_reported_with_its_stderr_even_though_it_exits_0():
    mac = FakeDirectory()
    mac.sysadminctl_refuses = "### Error:-14120 File:ODRecord.m Description:eDSPermissionError"
    result = run(mac, **NEW_SHARD)

    assert result.failed
    assert result["msg"] == (
        "sysadminctl did not create the user edge_sage_01: ### Error:-14120 File:ODRecord.m "
        "Description:eDSPermissionError Run the task as root (become: true)."
    )
    assert "edge_sage_01" not in mac.homes


def test_creating_without_password_is_refused_before_anything_runs():
    mac = FakeDirectory()
    result = run(mac, name="edge_sage_01")
    assert result.failed
    assert "password is required" in result["msg"]
    assert not any("sysadminctl" in call[0] for call in mac.calls)


def test_existing_user_is_brought_in_line_and_removed_from_admin():
    mac = FakeDirectory()
    mac.add("edge_sage_01", 502, "Old Name", shell="/bin/bash", hidden=False, admin=True)
    before = copy.deepcopy(mac.users)

    preview = run(mac, check_mode=True, **NEW_SHARD)
    assert preview["changed"] is True
    assert mac.users == before and "edge_sage_01" in mac.admins

    result = run(mac, **NEW_SHARD)
    assert result["changed"] is True
    assert result["commands"] == preview["commands"]
    assert result["commands"] == [
        "/usr/sbin/dscl . -create /Users/edge_sage_01 RealName 'Edge sage-01'",
        "/usr/sbin/dscl . -create /Users/edge_sage_01 UserShell /bin/zsh",
        "/usr/sbin/dscl . -create /Users/edge_sage_01 IsHidden 1",
        "/usr/sbin/dseditgroup -o edit -d edge_sage_01 -t user admin",
    ]
    assert result["diff"]["before"]["admin"] is True
    assert result["diff"]["after"]["admin"] is False
    assert "edge_sage_01" not in mac.admins
    assert "edge_sage_01" not in mac.passwords, "an existing user's password is left alone"

    assert run(mac, **NEW_SHARD)["changed"] is False


def test_admin_true_adds_membership():
    mac = FakeDirectory()
    mac.add("edge_sage_01", 502, "Edge sage-01", hidden=True)
    result = run(mac, admin=True, **NEW_SHARD)
    assert result["changed"] is True
    assert "edge_sage_01" in mac.admins
    assert result["user"]["admin"] is True


def test_uid_mismatch_on_existing_user_is_an_error_that_changes_nothing():
    mac = FakeDirectory()
    mac.add("edge_sage_01", 502, "Edge sage-01", hidden=True)
    result = run(mac, uid=600, **NEW_SHARD)
    assert result.failed
    assert "exists with uid 502, not 600" in result["msg"]
    assert mac.users["edge_sage_01"]["uid"] == 502


def test_absent_removes_user_keeping_home_by_default():
    mac = FakeDirectory()
    mac.add("edge_sage_01", 502, "Edge sage-01", hidden=True)

    preview = run(mac, check_mode=True, name="edge_sage_01", state="absent")
    assert preview["changed"] is True and "edge_sage_01" in mac.users

    result = run(mac, name="edge_sage_01", state="absent")
    assert result["changed"] is True
    assert result["commands"] == ["/usr/sbin/sysadminctl -deleteUser edge_sage_01 -keepHome"]
    assert "edge_sage_01" not in mac.users
    assert "edge_sage_01" in mac.homes
    assert result["user"] == {}

    assert run(mac, name="edge_sage_01", state="absent")["changed"] is False


def test_absent_with_remove_home_deletes_the_home():
    mac = FakeDirectory()
    mac.add("edge_sage_01", 502, "Edge sage-01")
    run(mac, name="edge_sage_01", state="absent", remove_home=True)
    assert "edge_sage_01" not in mac.homes


@pytest.mark.parametrize("state", ["absent", "present"])
def test_a_system_account_is_left_alone(state):
    mac = FakeDirectory()
    mac.add("root", 0, "System Administrator", shell="/bin/sh")
    result = run(mac, name="root", state=state)
    assert result.failed
    assert result["msg"] == (
        "root is a macOS system account (uid 0, below 501); this module manages shard users "
        "and leaves it alone. Check name."
    )
    assert "root" in mac.users
    assert not any("sysadminctl" in call[0] or "-create" in call for call in mac.calls)


def test_an_administrator_is_never_deleted():
    mac = FakeDirectory()
    mac.add("admin", 501, "Fleet admin")
    for check_mode in (True, False):
        result = run(mac, check_mode=check_mode, name="admin", state="absent")
        assert result.failed
        assert result["msg"].startswith("admin is an administrator of this Mac")
    assert "admin" in mac.users
    assert not any("sysadminctl" in call[0] for call in mac.calls)


def test_delete_that_sysadminctl_silently_refuses_is_an_error():
    mac = FakeDirectory()
    mac.add("edge_sage_01", 502, "Edge sage-01")
    mac.sysadminctl_refuses = "Operation is not permitted without secure token unlock."
    result = run(mac, name="edge_sage_01", state="absent")
    assert result.failed
    assert "did not delete the user edge_sage_01" in result["msg"]
    assert "secure token" in result["msg"]


def test_dscl_failure_other_than_missing_record_is_explained():
    def broken(argv, data):
        return 70, "", "<dscl_cmd> DS Error: -14009 (eDSUnknownNodeName)\n"

    result = run(broken, **NEW_SHARD)
    assert result.failed
    assert "dscl could not read the user record /Users/edge_sage_01 (exit 70)" in result["msg"]
    assert "eDSUnknownNodeName" in result["msg"]


def test_dseditgroup_failure_is_explained():
    mac = FakeDirectory()
    mac.add("edge_sage_01", 502, "Edge sage-01", hidden=True)

    def runner(argv, data):
        if argv[0].endswith("dseditgroup"):
            return 64, "", "Group not found.\n"
        return mac(argv, data)

    result = run(runner, **NEW_SHARD)
    assert result.failed
    assert "could not tell whether edge_sage_01 is a member of admin (exit 64)" in result["msg"]


def test_bad_short_name_is_refused_before_any_command():
    mac = FakeDirectory()
    result = run(mac, name="Edge Sage", password="x")
    assert result.failed
    assert "is not a macOS short name" in result["msg"]
    assert mac.calls == []


def test_home_elsewhere_is_reported_not_moved():
    mac = FakeDirectory()
    mac.add("edge_sage_01", 502, "Edge sage-01", hidden=True, home="/Volumes/Data/edge_sage_01")
    result = run(mac, **NEW_SHARD)
    assert result["changed"] is False
    assert result["user"]["home"] == "/Volumes/Data/edge_sage_01"
    assert result.warning_texts == [
        "user edge_sage_01 has the home folder /Volumes/Data/edge_sage_01, not "
        "/Users/edge_sage_01; it is left as it is."
    ]


DS_PERMISSION = (
    40,
    "",
    "<main> attribute status: eDSPermissionError\n"
    "<dscl_cmd> DS Error: -14120 (eDSPermissionError)\n",
)


def test_uid_already_in_use_is_named_with_what_to_do():
    mac = FakeDirectory()
    mac.add("edge_sage_02", 503, "Edge sage-02", hidden=True)
    result = run(mac, uid=503, **NEW_SHARD)
    assert result.failed
    assert result["msg"] == (
        "sysadminctl did not create the user edge_sage_01: ### Error: UID 503 is already in use "
        "by edge_sage_02. Give a free uid, or leave uid out and macOS picks one."
    )
    assert "edge_sage_01" not in mac.users and "edge_sage_01" not in mac.homes
    assert not any(call[0].endswith("createhomedir") for call in mac.calls)


def test_sysadminctl_that_exits_non_zero_is_reported_with_its_words():
    def runner(argv, data):
        if argv[0].endswith("sysadminctl"):
            return 1, "", "Unrecognized option: -shell\nUsage: sysadminctl [options]\n"
        return mac(argv, data)

    mac = FakeDirectory()
    result = run(runner, **NEW_SHARD)
    assert result.failed
    assert result["msg"] == (
        "sysadminctl -addUser edge_sage_01 failed (exit 1): Unrecognized option: -shell "
        "Usage: sysadminctl [options]."
    )


def test_sysadminctl_that_picks_another_uid_is_an_error():
    mac = FakeDirectory()

    def runner(argv, data):
        if argv[0].endswith("sysadminctl"):
            argv = [a if a != "510" else "520" for a in argv]
        return mac(argv, data)

    result = run(runner, uid=510, **NEW_SHARD)
    assert result.failed
    assert result["msg"].startswith("sysadminctl created edge_sage_01 with uid 520, not 510: ")
    assert result["msg"].endswith("Remove the user (state=absent) and create it again.")


def test_failed_createhomedir_says_the_user_is_left_without_home_and_a_rerun_makes_it():
    mac = FakeDirectory()
    mac.createhomedir_fails = (1, "", "createhomedir: must be run as root\n")
    result = run(mac, **NEW_SHARD)
    assert result.failed
    assert result["msg"] == (
        "createhomedir for edge_sage_01 failed (exit 1): createhomedir: must be run as root. "
        "Run the task as root (become: true). The user edge_sage_01 exists without its home "
        "folder: once the cause is fixed, run the task again and it makes the folder."
    )
    assert "edge_sage_01" in mac.users and "edge_sage_01" not in mac.homes

    mac.createhomedir_fails = None
    preview = run(mac, check_mode=True, **NEW_SHARD)
    assert preview["changed"] is True
    assert preview["commands"] == [
        "/usr/sbin/createhomedir -c -u edge_sage_01",
        "/usr/sbin/dscl . -create /Users/edge_sage_01 IsHidden 1",
    ]
    assert "edge_sage_01" not in mac.homes

    resumed = run(mac, **NEW_SHARD)
    assert resumed["changed"] is True
    assert resumed["commands"] == preview["commands"]
    assert "edge_sage_01" in mac.homes
    assert run(mac, **NEW_SHARD)["changed"] is False


def test_refused_dscl_write_says_to_run_as_root_and_stops():
    mac = FakeDirectory()
    mac.add("edge_sage_01", 502, "Edge sage-01", hidden=False)
    mac.dscl_create_fails = DS_PERMISSION
    result = run(mac, **NEW_SHARD)
    assert result.failed
    assert result["msg"] == (
        "setting IsHidden of edge_sage_01 failed (exit 40): <main> attribute status: "
        "eDSPermissionError <dscl_cmd> DS Error: -14120 (eDSPermissionError). "
        "Run the task as root (become: true)."
    )
    assert mac.users["edge_sage_01"]["hidden"] is None


def test_refused_dscl_read_says_to_run_as_root():
    def runner(argv, data):
        return 40, "", "<dscl_cmd> DS Error: -14120 (eDSPermissionError)\n"

    result = run(runner, **NEW_SHARD)
    assert result.failed
    assert result["msg"] == (
        "dscl could not read the user record /Users/edge_sage_01 (exit 40): <dscl_cmd> DS "
        "Error: -14120 (eDSPermissionError). Run the task as root (become: true)."
    )


def test_refused_admin_change_is_explained():
    mac = FakeDirectory()
    mac.add("edge_sage_01", 502, "Edge sage-01", hidden=True, admin=True)
    mac.dseditgroup_edit_fails = (64, "", "Username and password must be provided.\n")
    result = run(mac, **NEW_SHARD)
    assert result.failed
    assert result["msg"] == (
        "removing edge_sage_01 from group admin failed (exit 64): Username and password must "
        "be provided."
    )
    assert "edge_sage_01" in mac.admins


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(NEW_SHARD, password="first\nsecond"), "password holds a line break"),
        (
            dict(NEW_SHARD, uid=0),
            "uid 0 is out of range: give 501 or more (below are macOS's own accounts), or leave "
            "uid out.",
        ),
        (dict(NEW_SHARD, uid=500), "uid 500 is out of range: give 501 or more"),
        (dict(NEW_SHARD, shell="zsh"), "shell 'zsh' is not an absolute path, e.g. /bin/zsh."),
    ],
    ids=["password-line-break", "uid-zero", "uid-system-range", "shell-relative"],
)
def test_bad_input_is_refused_before_any_command(args, message):
    mac = FakeDirectory()
    result = run(mac, **args)
    assert result.failed
    assert message in result["msg"]
    assert mac.calls == []
    assert "first" not in repr(result) and "second" not in result["msg"]


def test_creates_a_visible_admin_when_asked():
    mac = FakeDirectory()
    result = run(mac, hidden=False, admin=True, **NEW_SHARD)
    assert result["changed"] is True
    assert result["user"]["hidden"] is False and result["user"]["admin"] is True
    assert result["commands"][-1] == "/usr/sbin/dseditgroup -o edit -a edge_sage_01 -t user admin"
    assert not any("IsHidden" in command for command in result["commands"])
    assert run(mac, hidden=False, admin=True, **NEW_SHARD)["changed"] is False


def test_home_is_looked_for_on_the_disk(tmp_path):
    assert macos_user.home_exists(str(tmp_path)) is True
    assert macos_user.home_exists(str(tmp_path / "edge_sage_01")) is False
