"""archety.edge.mac_facts against macOS 14's sw_vers, xcode-select, pmset and fdesetup."""

import os
import sqlite3

import pytest
from ansible_collections.archety.edge.plugins.modules import mac_facts
from macos_fakes import FakeDirectory
from module_support import command_name, run_module

RELAY_CLIENT = "/Library/Developer/CommandLineTools/usr/bin/python3"
SW_VERS = "ProductName:\t\tmacOS\nProductVersion:\t\t{version}\nBuildVersion:\t\t{build}\n"
PMSET = """System-wide power settings:
Currently in use:
 standby              0
 Sleep On Power Button 1
 autorestart          {autorestart}
 powernap             1
 networkoversleep     0
 disksleep            10
 sleep                {sleep}
 ttyskeepawake        1
 displaysleep         10
 tcpkeepalive         1
 powermode            0
 womp                 1
"""
NO_CLT = (
    "xcode-select: error: unable to get active developer directory. Use `sudo xcode-select "
    "--switch path/to/Xcode.app` to set the path (or `xcode-select --install` to install the "
    "command line developer tools).\n"
)
# The access table of macOS 14's TCC.db, with the columns the module reads and their keys.
TCC_SCHEMA = """
CREATE TABLE access (service TEXT NOT NULL, client TEXT NOT NULL, client_type INTEGER NOT NULL,
  auth_value INTEGER NOT NULL, auth_reason INTEGER NOT NULL, auth_version INTEGER NOT NULL,
  csreq BLOB, policy_id INTEGER, indirect_object_identifier_type INTEGER,
  indirect_object_identifier TEXT NOT NULL DEFAULT 'UNUSED', indirect_object_code_identity BLOB,
  flags INTEGER, last_modified INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (service, client, client_type, indirect_object_identifier));
"""


class FakeMac(FakeDirectory):
    def __init__(self):
        super().__init__()
        self.version, self.build = "14.6.1", "23G93"
        self.sleep, self.autorestart = "0", "1"
        self.clt = True
        self.filevault = False
        self.gui_uids = {502}

    def __call__(self, argv, data=None):
        name = command_name(argv)
        if name == "sw_vers":
            return 0, SW_VERS.format(version=self.version, build=self.build), ""
        if name == "xcode-select":
            if self.clt:
                return 0, "/Library/Developer/CommandLineTools\n", ""
            return 2, "", NO_CLT
        if name == "pmset":
            return 0, PMSET.format(sleep=self.sleep, autorestart=self.autorestart), ""
        if name == "fdesetup":
            return 0, "FileVault is On.\n" if self.filevault else "FileVault is Off.\n", ""
        if name == "launchctl":
            uid = int(argv[2].split("/")[1])
            if uid in self.gui_uids:
                return 0, f"gui/{uid} = {{\n\ttype = login\n\thandle = {uid}\n}}\n", ""
            return 113, "", f"Bad request.\nCould not find domain for user gui: {uid}\n"
        return super().__call__(argv, data)


def tcc_db(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.executescript(TCC_SCHEMA)
        for service, client, auth_value, indirect in rows:
            conn.execute(
                "INSERT INTO access (service, client, client_type, auth_value, auth_reason, "
                "auth_version, indirect_object_identifier) VALUES (?, ?, 1, ?, 3, 1, ?)",
                (service, client, auth_value, indirect),
            )
    conn.close()


@pytest.fixture
def mac(tmp_path, monkeypatch):
    system_tcc = tmp_path / "Library/Application Support/com.apple.TCC/TCC.db"
    monkeypatch.setattr(mac_facts, "SYSTEM_TCC", str(system_tcc))
    fake = FakeMac()
    home = tmp_path / "Users" / "edge_sage_01"
    fake.add("edge_sage_01", 502, "Edge sage-01", hidden=True, home=str(home))
    fake.system_tcc = str(system_tcc)
    fake.home = home
    return fake


def facts(mac, check_mode=False, **args):
    result = run_module(mac_facts.main, args, mac, check_mode=check_mode)
    assert result["changed"] is False
    return result


def test_a_ready_mac(mac):
    tcc_db(mac.system_tcc, [("kTCCServiceSystemPolicyAllFiles", RELAY_CLIENT, 2, "UNUSED")])
    user_tcc = str(mac.home / "Library/Application Support/com.apple.TCC/TCC.db")
    tcc_db(user_tcc, [("kTCCServiceAppleEvents", RELAY_CLIENT, 2, "com.apple.MessagesApp")])
    os.makedirs(mac.home / "Library/Messages")
    (mac.home / "Library/Messages/chat.db").write_bytes(b"")

    result = facts(mac, check_mode=True, users=["edge_sage_01", "edge_sage_09"])
    edge_mac = result["ansible_facts"]["edge_mac"]
    assert edge_mac["macos"] == {"product_version": "14.6.1", "build_version": "23G93"}
    assert edge_mac["clt"] == {"installed": True, "path": "/Library/Developer/CommandLineTools"}
    assert edge_mac["pmset"] == {"sleep": 0, "autorestart": 1}
    assert edge_mac["filevault"] == {"enabled": False}
    assert edge_mac["users"]["edge_sage_01"] == {
        "exists": True,
        "uid": 502,
        "gui_session": True,
        "messages_db": True,
        "full_disk_access": True,
        "automation": True,
    }
    assert edge_mac["users"]["edge_sage_09"]["exists"] is False
    assert edge_mac["warnings"] == []
    assert "warnings" not in result


def test_an_unprepared_mac_warns_about_each_problem(mac):
    mac.version, mac.build = "12.7.4", "21H1123"
    mac.sleep, mac.autorestart = "1 (sleep prevented by sharingd, powerd)", "0"
    mac.clt = False
    mac.filevault = True
    mac.gui_uids = set()

    result = facts(mac, users=["edge_sage_01"])
    edge_mac = result["ansible_facts"]["edge_mac"]
    assert edge_mac["pmset"] == {"sleep": 1, "autorestart": 0}
    assert edge_mac["clt"] == {"installed": False, "path": None}
    assert edge_mac["filevault"] == {"enabled": True}
    user = edge_mac["users"]["edge_sage_01"]
    assert user["gui_session"] is False
    assert user["messages_db"] is False
    assert user["full_disk_access"] is False and user["automation"] is False
    text = " ".join(edge_mac["warnings"])
    for expected in (
        "macOS 12.7.4 is older than 13",
        "Command Line Tools are not installed",
        "system sleep is on",
        "autorestart is off",
        "FileVault is on",
    ):
        assert expected in text
    assert result.warning_texts == edge_mac["warnings"]


def test_grant_switched_off_or_for_another_client_is_false(mac):
    tcc_db(
        mac.system_tcc,
        [
            ("kTCCServiceSystemPolicyAllFiles", RELAY_CLIENT, 0, "UNUSED"),
            ("kTCCServiceSystemPolicyAllFiles", "/usr/bin/python3", 2, "UNUSED"),
        ],
    )
    user_tcc = str(mac.home / "Library/Application Support/com.apple.TCC/TCC.db")
    tcc_db(user_tcc, [("kTCCServiceAppleEvents", RELAY_CLIENT, 2, "com.apple.finder")])
    user = facts(mac, users=["edge_sage_01"])["ansible_facts"]["edge_mac"]["users"]
    assert user["edge_sage_01"]["full_disk_access"] is False
    assert user["edge_sage_01"]["automation"] is False


def test_unreadable_tcc_database_gives_null_and_a_warning(mac):
    os.makedirs(os.path.dirname(mac.system_tcc))
    with open(mac.system_tcc, "wb") as handle:
        handle.write(b"not a database, as macOS shows it without Full Disk Access" * 100)
    result = facts(mac, users=["edge_sage_01"])
    edge_mac = result["ansible_facts"]["edge_mac"]
    assert edge_mac["users"]["edge_sage_01"]["full_disk_access"] is None
    assert any(
        w.startswith("Full Disk Access of the relays unknown") and "Full Disk Access" in w
        for w in edge_mac["warnings"]
    )


def test_failing_command_is_a_sentence(mac):
    def runner(argv, data):
        if command_name(argv) == "pmset":
            return 1, "", "pmset: Unable to get power settings\n"
        return mac(argv, data)

    result = run_module(mac_facts.main, {}, runner)
    assert result.failed
    assert result["msg"] == "pmset -g failed (exit 1): pmset: Unable to get power settings."


def failing(mac, name, answer):
    def runner(argv, data):
        if command_name(argv) == name:
            return answer
        return mac(argv, data)

    return runner


def test_fdesetup_refused_without_root_says_to_become_root(mac):
    runner = failing(mac, "fdesetup", (1, "", "Error: This command must be run as root.\n"))
    result = run_module(mac_facts.main, {}, runner)
    assert result.failed
    assert result["msg"] == (
        "fdesetup status failed (exit 1): Error: This command must be run as root. "
        "Run the task as root (become: true)."
    )


def test_sw_vers_failure_and_missing_version_are_sentences(mac):
    failed = run_module(mac_facts.main, {}, failing(mac, "sw_vers", (1, "", "sw_vers: error\n")))
    assert failed["msg"] == "sw_vers failed (exit 1): sw_vers: error."
    odd = failing(mac, "sw_vers", (0, "ProductName:\tmacOS\nno version here\n", ""))
    result = run_module(mac_facts.main, {}, odd)
    assert result.failed
    assert result["msg"] == "sw_vers printed no ProductVersion: ProductName: macOS no version here"


def test_power_settings_pmset_does_not_print_are_null(mac):
    bare = failing(mac, "pmset", (0, "System-wide power settings:\nCurrently in use:\n", ""))
    result = run_module(mac_facts.main, {}, bare)
    assert result["ansible_facts"]["edge_mac"]["pmset"] == {"sleep": None, "autorestart": None}
    assert not any("sleep" in w for w in result["ansible_facts"]["edge_mac"]["warnings"])


def test_messages_folder_that_cannot_be_looked_into_is_unknown_with_a_warning(mac):
    os.makedirs(mac.home / "Library")
    (mac.home / "Library/Messages").write_text("a file where a folder should be")
    result = facts(mac, users=["edge_sage_01"])
    edge_mac = result["ansible_facts"]["edge_mac"]
    assert edge_mac["users"]["edge_sage_01"]["messages_db"] is None
    chat_db = mac.home / "Library/Messages/chat.db"
    assert f"whether {chat_db} exists is unknown: Not a directory." in edge_mac["warnings"]
