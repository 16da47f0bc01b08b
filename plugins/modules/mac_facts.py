#!/usr/bin/python
# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: mac_facts
short_description: Gather what a Mac mini needs to run shards, as facts
description:
  - Reads the Mac's version, Command Line Tools, power settings and FileVault state, and for
    each shard user whether it exists, has a GUI login session, has a Messages database, and
    whether the relays hold the Full Disk Access and Automation (Messages) grants.
  - Sets C(ansible_facts.edge_mac). Changes nothing, also in check mode.
  - Runs on the Mac as root, under macOS's Python 3.9 or newer.
version_added: "0.1.0"
author:
  - Archety edge team (@archety)
options:
  users:
    description: Short names of the shard users to look at.
    type: list
    elements: str
    default: []
  relay_client:
    description:
      - The program macOS holds responsible for the relays, the interpreter they run with.
        Full Disk Access and Automation are looked up for this client.
    type: path
    default: /Library/Developer/CommandLineTools/usr/bin/python3
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  facts:
    support: full
  platform:
    support: full
    platforms: darwin
notes:
  - The privacy grants are read from macOS's TCC databases, C(/Library/Application
    Support/com.apple.TCC/TCC.db) (Full Disk Access) and the user's own
    C(~/Library/Application Support/com.apple.TCC/TCC.db) (Automation). On a real Mac reading
    them needs Full Disk Access for the process running the module (C(sshd-keygen-wrapper)
    for SSH); when a database cannot be read the fact is null and a warning says why.
  - A grant is reported only when it is switched on (C(auth_value) 2); a grant switched off
    in System Settings, or never asked for, is V(false).
  - Must run as root, with C(become), to read the system TCC database and other users'
    files.
"""

EXAMPLES = r"""
- name: Gather the Mac's state for its shards
  archety.edge.mac_facts:
    users: [edge_sage_01, edge_sage_02]
  become: true

- name: Stop a shard whose relay cannot read Messages
  ansible.builtin.fail:
    msg: Full Disk Access is missing for the relays
  when: not ansible_facts.edge_mac.users.edge_sage_01.full_disk_access
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: dict
  contains:
    edge_mac:
      description: The Mac's state.
      type: dict
      returned: always
      sample:
        macos: {product_version: "14.6.1", build_version: 23G93}
        clt: {installed: true, path: /Library/Developer/CommandLineTools}
        pmset: {sleep: 0, autorestart: 1}
        filevault: {enabled: false}
        users:
          edge_sage_01:
            exists: true
            uid: 502
            gui_session: true
            messages_db: true
            full_disk_access: true
            automation: false
        warnings: []
"""

import os  # noqa: E402  (Ansible keeps the documentation first)
import re  # noqa: E402
import sqlite3  # noqa: E402
from urllib.parse import quote  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.archety.edge.plugins.module_utils.macos import (  # noqa: E402
    hint,
    output_of,
    read_user_record,
    sentence,
    user_facts,
)

SYSTEM_TCC = "/Library/Application Support/com.apple.TCC/TCC.db"
USER_TCC = "Library/Application Support/com.apple.TCC/TCC.db"
FULL_DISK_ACCESS = "kTCCServiceSystemPolicyAllFiles"
APPLE_EVENTS = "kTCCServiceAppleEvents"
MESSAGES_APP = "com.apple.MessagesApp"
AUTH_ALLOWED = 2
OLDEST_MACOS = (13,)
PMSET_KEY = re.compile(r"^\s*(sleep|autorestart)\s+(\d+)")


class MacFacts:
    def __init__(self, module):
        self.module = module
        self.warnings = []

    def command(self, name, *args):
        path = self.module.get_bin_path(name, required=True)
        return self.module.run_command([path] + list(args))

    def fail(self, what, rc, out, err):
        said = output_of(out, err)
        self.module.fail_json(msg=f"{what} failed (exit {rc}): {sentence(said)}{hint(said)}")

    def macos(self):
        rc, out, err = self.command("sw_vers")
        if rc != 0:
            self.fail("sw_vers", rc, out, err)
        values = {}
        for line in out.splitlines():
            key, colon, value = line.partition(":")
            if colon:
                values[key.strip()] = value.strip()
        version = values.get("ProductVersion")
        if not version:
            self.module.fail_json(msg=f"sw_vers printed no ProductVersion: {output_of(out, '')}")
        found = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
        if found < OLDEST_MACOS:
            self.warnings.append(
                f"macOS {version} is older than 13: the fleet is built for macOS 13 or newer."
            )
        return {"product_version": version, "build_version": values.get("BuildVersion")}

    def clt(self):
        rc, out, err = self.command("xcode-select", "-p")
        if rc == 0 and out.strip():
            return {"installed": True, "path": out.strip()}
        self.warnings.append(
            "the Command Line Tools are not installed: the relays need their python3. "
            "Install them (xcode-select --install, or the package from Apple)."
        )
        return {"installed": False, "path": None}

    def pmset(self):
        rc, out, err = self.command("pmset", "-g")
        if rc != 0:
            self.fail("pmset -g", rc, out, err)
        values = {"sleep": None, "autorestart": None}
        for line in out.splitlines():
            match = PMSET_KEY.match(line)
            if match:
                values[match.group(1)] = int(match.group(2))
        if values["sleep"]:
            self.warnings.append(
                f"system sleep is on (sleep {values['sleep']} minutes): a sleeping Mac stops "
                "its relays. Set it off with pmset -a sleep 0."
            )
        if values["autorestart"] == 0:
            self.warnings.append(
                "autorestart is off: after a power cut the Mac stays off. Set it with "
                "pmset -a autorestart 1."
            )
        return values

    def filevault(self):
        rc, out, err = self.command("fdesetup", "status")
        if rc != 0:
            self.fail("fdesetup status", rc, out, err)
        enabled = out.strip().startswith("FileVault is On")
        if enabled:
            self.warnings.append(
                "FileVault is on: after a restart the Mac waits at the unlock screen and logs "
                "no user in, so no relay runs until a person unlocks it."
            )
        return {"enabled": enabled}

    def granted(self, path, what, service, client, indirect=None):
        """True or False from a TCC database, or None (and a warning) when it cannot be read."""
        if not os.path.exists(path):
            return False
        query = "SELECT auth_value FROM access WHERE service = ? AND client = ?"
        params = [service, client]
        if indirect is not None:
            query += " AND indirect_object_identifier = ?"
            params.append(indirect)
        try:
            conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=5)
            try:
                rows = conn.execute(query, params).fetchall()
            finally:
                conn.close()
        except sqlite3.Error as err:
            self.warnings.append(
                f"{what} unknown: {path} cannot be read ({err}). On a Mac, give the process "
                "running this module (sshd-keygen-wrapper for SSH) Full Disk Access."
            )
            return None
        return any(row[0] == AUTH_ALLOWED for row in rows)

    def user(self, name, relay_client, full_disk_access):
        dscl = self.module.get_bin_path("dscl", required=True)
        record = read_user_record(self.module, dscl, name)
        if record is None:
            return {
                "exists": False,
                "uid": None,
                "gui_session": False,
                "messages_db": False,
                "full_disk_access": full_disk_access,
                "automation": False,
            }
        facts = user_facts(record, name)
        rc, _out, _err = self.command("launchctl", "print", f"gui/{facts['uid']}")
        home = facts["home"] or f"/Users/{name}"
        return {
            "exists": True,
            "uid": facts["uid"],
            "gui_session": rc == 0,
            "messages_db": self.messages_db(name, home),
            "full_disk_access": full_disk_access,
            "automation": self.granted(
                os.path.join(home, USER_TCC),
                f"Automation of Messages for {name}",
                APPLE_EVENTS,
                relay_client,
                MESSAGES_APP,
            ),
        }

    def messages_db(self, name, home):
        path = os.path.join(home, "Library", "Messages", "chat.db")
        try:
            os.stat(path)
        except FileNotFoundError:
            return False
        except OSError as err:
            self.warnings.append(f"whether {path} exists is unknown: {err.strerror}.")
            return None
        return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            users=dict(type="list", elements="str", default=[]),
            relay_client=dict(
                type="path", default="/Library/Developer/CommandLineTools/usr/bin/python3"
            ),
        ),
        supports_check_mode=True,
    )
    mac = MacFacts(module)
    relay_client = module.params["relay_client"]
    facts = {
        "macos": mac.macos(),
        "clt": mac.clt(),
        "pmset": mac.pmset(),
        "filevault": mac.filevault(),
    }
    full_disk_access = mac.granted(
        SYSTEM_TCC, "Full Disk Access of the relays", FULL_DISK_ACCESS, relay_client
    )
    facts["users"] = dict(
        (name, mac.user(name, relay_client, full_disk_access)) for name in module.params["users"]
    )
    facts["warnings"] = mac.warnings
    for warning in mac.warnings:
        module.warn(warning)
    module.exit_json(changed=False, ansible_facts={"edge_mac": facts})


if __name__ == "__main__":
    main()
