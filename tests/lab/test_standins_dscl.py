"""dscl stand-in: reads, lists and writes user records in the host's account files."""

import json

import pytest
from standins_support import group_members, passwd_lines, run_standin, standin_root


@pytest.fixture
def host_root():
    with standin_root() as root:
        yield root


def dscl(root, *args, **kwargs):
    return run_standin(root, "dscl", *args, **kwargs)


def test_read_prints_each_attribute_as_key_value_lines(host_root):
    result = dscl(host_root, ".", "-read", "/Users/admin")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "AppleMetaNodeLocation: /Local/Default",
        "NFSHomeDirectory: /Users/admin",
        "Password: ********",
        "PrimaryGroupID: 20",
        "RealName: Admin",
        "RecordName: admin",
        "RecordType: dsRecTypeStandard:Users",
        "UniqueID: 501",
        "UserShell: /bin/zsh",
    ]


def test_a_value_with_a_space_goes_on_its_own_indented_line(host_root):
    assert dscl(host_root, ".", "-create", "/Users/admin", "RealName", "Lab Admin").returncode == 0
    result = dscl(host_root, ".", "-read", "/Users/admin", "RealName")
    assert result.stdout == "RealName:\n Lab Admin\n"
    assert "admin:x:501:20:Lab Admin:/Users/admin:/bin/zsh" in passwd_lines(host_root)


def test_read_named_keys_in_the_order_asked(host_root):
    result = dscl(host_root, ".", "-read", "/Users/admin", "UniqueID", "NFSHomeDirectory")
    assert result.stdout == "UniqueID: 501\nNFSHomeDirectory: /Users/admin\n"


def test_a_missing_key_is_reported_on_stderr(host_root):
    result = dscl(host_root, ".", "-read", "/Users/admin", "IsHidden")
    assert result.returncode == 181
    assert result.stdout == ""
    assert result.stderr == "No such key: IsHidden\n"


def test_a_missing_record_is_eDSRecordNotFound_exit_56(host_root):
    result = dscl(host_root, ".", "-read", "/Users/edge_sage_01")
    assert result.returncode == 56
    assert result.stderr == "<dscl_cmd> DS Error: -14136 (eDSRecordNotFound)\n"
    assert result.stdout == ""


def test_list_users_and_list_with_a_key_in_a_column(host_root):
    names = dscl(host_root, ".", "-list", "/Users").stdout.splitlines()
    assert names == ["admin", "daemon", "nobody", "root"]
    rows = dscl(host_root, ".", "-list", "/Users", "UniqueID").stdout.splitlines()
    assert rows == ["admin  501", "daemon 1", "nobody 65534", "root   0"]


def test_is_hidden_is_kept_in_the_record_side_file(host_root):
    assert dscl(host_root, ".", "-create", "/Users/admin", "IsHidden", "1").returncode == 0
    assert dscl(host_root, ".", "-read", "/Users/admin", "IsHidden").stdout == "IsHidden: 1\n"
    side = host_root / "private/var/db/edge-lab/dslocal/admin.json"
    assert json.loads(side.read_text())["attributes"] == {"IsHidden": ["1"]}
    assert dscl(host_root, ".", "-delete", "/Users/admin", "IsHidden").returncode == 0
    assert dscl(host_root, ".", "-read", "/Users/admin", "IsHidden").returncode == 181
    assert not side.exists()


def test_create_builds_a_record_attribute_by_attribute(host_root):
    for args in (
        [],
        ["UniqueID", "510"],
        ["PrimaryGroupID", "20"],
        ["NFSHomeDirectory", "/Users/edge_sage_01"],
        ["UserShell", "/bin/zsh"],
    ):
        result = dscl(host_root, ".", "-create", "/Users/edge_sage_01", *args)
        assert result.returncode == 0, result.stderr
    assert "edge_sage_01:*:510:20::/Users/edge_sage_01:/bin/zsh" in passwd_lines(host_root)
    keys = dscl(host_root, ".", "-list", "/Users/edge_sage_01").stdout.split()
    assert "UniqueID" in keys and "RealName" not in keys


def test_a_new_record_shows_no_unset_attributes(host_root):
    assert dscl(host_root, ".", "-create", "/Users/edge_sage_01").returncode == 0
    result = dscl(host_root, ".", "-read", "/Users/edge_sage_01", "UniqueID", "RecordName")
    assert result.stdout == "RecordName: edge_sage_01\n"
    assert result.stderr == "No such key: UniqueID\n"


def test_bad_values_change_nothing(host_root):
    before = (host_root / "etc/passwd").read_text()
    result = dscl(host_root, ".", "-create", "/Users/admin", "UniqueID", "five")
    assert result.returncode != 0
    assert "UniqueID 'five' is not a number" in result.stderr
    result = dscl(host_root, ".", "-create", "/Users/admin", "UniqueID", "0")
    assert result.returncode != 0
    assert "already belongs to root" in result.stderr
    assert (host_root / "etc/passwd").read_text() == before


def test_delete_removes_the_record_everywhere(host_root):
    assert dscl(host_root, ".", "-delete", "/Users/admin").returncode == 0
    assert not any(line.startswith("admin:") for line in passwd_lines(host_root))
    assert "admin:" not in (host_root / "etc/shadow").read_text()
    assert group_members(host_root, "admin") == ["root"]
    assert dscl(host_root, ".", "-delete", "/Users/admin").returncode == 56


def test_read_a_group(host_root):
    result = dscl(host_root, ".", "-read", "/Groups/admin", "GroupMembership", "PrimaryGroupID")
    assert result.stdout == "GroupMembership: root admin\nPrimaryGroupID: 80\n"
    assert dscl(host_root, ".", "-read", "/Groups/nosuch").returncode == 56


def test_writes_need_root_reads_do_not(host_root):
    before = (host_root / "etc/passwd").read_text()
    result = dscl(host_root, ".", "-create", "/Users/admin", "IsHidden", "1", as_nobody=True)
    assert result.returncode == 40
    assert result.stderr == (
        "<main> attribute status: eDSPermissionError\n"
        "<dscl_cmd> DS Error: -14120 (eDSPermissionError)\n"
    )
    assert dscl(host_root, ".", "-delete", "/Users/admin", as_nobody=True).returncode == 40
    assert (host_root / "etc/passwd").read_text() == before
    assert not (host_root / "private/var/db/edge-lab/dslocal/admin.json").exists()
    read = dscl(host_root, ".", "-read", "/Users/admin", "UniqueID", as_nobody=True)
    assert read.returncode == 0 and read.stdout == "UniqueID: 501\n"


def test_other_commands_and_sources_are_refused(host_root):
    result = dscl(host_root, ".", "-passwd", "/Users/admin", "x")
    assert result.returncode == 64 and "Invalid command: -passwd" in result.stderr
    result = dscl(host_root, "/LDAPv3/ldap.example", "-read", "/Users/admin")
    assert result.returncode == 185
    assert "Data source (/LDAPv3/ldap.example) is not valid." in result.stderr
    assert dscl(host_root, ".").returncode == 64
    assert dscl(host_root, ".", "-read", "/Computers/x").returncode == 64
