#!/usr/bin/python
# Copyright: archety.edge contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: macos_user
short_description: Create, update or remove a local macOS user for a shard
description:
  - Manages one local user on a Mac through macOS's own tools, C(sysadminctl),
    C(dscl), C(createhomedir) and C(dseditgroup), so the account is made the way
    System Settings makes it, with a home folder populated from the user template.
  - Reads the user with C(dscl . -read /Users/NAME) and its admin membership with
    C(dseditgroup -o checkmember), compares, and changes only what differs.
  - Makes the home folder of an existing user whose C(/Users/NAME) is missing (a run stopped
    between C(sysadminctl) and C(createhomedir)), so running the task again completes the user.
  - Runs on the Mac as root, under macOS's Python 3.9 or newer.
version_added: "0.1.0"
author:
  - Archety edge team (@archety)
options:
  name:
    description: Short name of the user, for example C(edge_sage_01).
    type: str
    required: true
  full_name:
    description:
      - Full name (C(RealName)). Defaults to O(name) when the user is created;
        left as it is on an existing user when not given.
    type: str
  uid:
    description:
      - User id to create the user with, 501 or more. On an existing user it is only checked;
        a different uid is an error, since macOS does not renumber a user in place.
    type: int
  shell:
    description: Login shell (C(UserShell)).
    type: str
    default: /bin/zsh
  hidden:
    description: Whether the user is hidden from the login window and Users & Groups (C(IsHidden)).
    type: bool
    default: true
  admin:
    description:
      - Whether the user is a member of group C(admin). With V(false) the user is
        removed from the group if it is a member.
    type: bool
    default: false
  password:
    description:
      - Password to create the user with. Passed to C(sysadminctl) on standard input,
        never on a command line. Required to create a user; ignored for an existing user.
      - C(sysadminctl) reads one line, so a password with a line break is refused.
    type: str
  state:
    description: Whether the user should exist.
    type: str
    choices: [present, absent]
    default: present
  remove_home:
    description: With O(state=absent), also delete the home folder; otherwise it is kept.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    support: full
    platforms: darwin
notes:
  - C(sysadminctl) exits 0 on many failures; the module reads the record back with
    C(dscl) after every create or delete and fails with the error lines of
    C(sysadminctl) when the record is not as expected, with what to do for the failures it
    knows (not root, a uid already in use).
  - When C(createhomedir) fails the user exists without its home folder; the failure says
    so, and the next run makes the folder.
  - The password of an existing user is never compared or changed.
  - The home folder is always C(/Users/NAME); a user whose record points elsewhere is
    reported as it is, not moved.
  - A user created this way has no Secure Token; FileVault unlock by this user is
    not set up.
  - Leaves system accounts (uid below 501) alone and never deletes an administrator; both
    fail, naming the account, since a shard user is neither and a mistyped name must not
    remove the account Ansible logs in with.
  - Must run as root, with C(become).
"""

EXAMPLES = r"""
- name: Create the shard's user, hidden and not an admin
  archety.edge.macos_user:
    name: edge_sage_01
    full_name: Edge sage-01
    password: "{{ edge_shard_password }}"
  become: true
  no_log: false

- name: Remove a retired shard's user and its home folder
  archety.edge.macos_user:
    name: edge_sage_07
    state: absent
    remove_home: true
  become: true
"""

RETURN = r"""
user:
  description: The user after the run (what it would be, in check mode); empty when absent.
  returned: always
  type: dict
  sample:
    name: edge_sage_01
    uid: 502
    gid: 20
    full_name: Edge sage-01
    home: /Users/edge_sage_01
    shell: /bin/zsh
    hidden: true
    admin: false
commands:
  description: The commands the module ran, or would run in check mode. Never holds the password.
  returned: always
  type: list
  elements: str
  sample:
    - sysadminctl -addUser edge_sage_01 -fullName 'Edge sage-01' -shell /bin/zsh
      -home /Users/edge_sage_01 -password -
    - createhomedir -c -u edge_sage_01
    - dscl . -create /Users/edge_sage_01 IsHidden 1
"""

import os  # noqa: E402  (Ansible keeps the documentation first)
import re  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.archety.edge.plugins.module_utils.macos import (  # noqa: E402
    command_line,
    hint,
    output_of,
    read_user_record,
    sentence,
    sysadminctl_said,
    user_facts,
)

SHORT_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,30}$")
# dseditgroup -o checkmember exits 0 for a member and 67 for a user that is not one.
NOT_A_MEMBER = 67
# macOS numbers the users people make from 501; below are its own accounts (root, daemons).
FIRST_LOCAL_UID = 501


class MacUser:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.name = module.params["name"]
        self.commands = []
        self.changed = False
        self.dscl = module.get_bin_path("dscl", required=True)
        self.dseditgroup = module.get_bin_path("dseditgroup", required=True)

    def run(self, argv, what, data=None, after_failure=""):
        """Run a changing command, or only record it in check mode."""
        self.commands.append(command_line(argv))
        self.changed = True
        if self.module.check_mode:
            return "", ""
        rc, out, err = self.module.run_command(argv, data=data)
        if rc != 0:
            said = output_of(out, err)
            self.module.fail_json(
                msg=f"{what} failed (exit {rc}): {sentence(said)}{hint(said)}{after_failure}",
                commands=self.commands,
            )
        return out, err

    def read(self):
        record = read_user_record(self.module, self.dscl, self.name)
        if record is None:
            return None
        facts = user_facts(record, self.name)
        facts["admin"] = self.is_admin()
        return facts

    def is_admin(self):
        argv = [self.dseditgroup, "-o", "checkmember", "-m", self.name, "admin"]
        rc, out, err = self.module.run_command(argv)
        if rc == 0:
            return True
        if rc == NOT_A_MEMBER:
            return False
        said = output_of(out, err)
        self.module.fail_json(
            msg=f"dseditgroup could not tell whether {self.name} is a member of admin "
            f"(exit {rc}): {sentence(said)}{hint(said)}"
        )
        return False

    def set_admin(self, admin):
        flag = "-a" if admin else "-d"
        argv = [self.dseditgroup, "-o", "edit", flag, self.name, "-t", "user", "admin"]
        verb = "adding %s to" if admin else "removing %s from"
        self.run(argv, (verb + " group admin") % self.name)

    def set_attribute(self, key, value):
        self.run(
            [self.dscl, ".", "-create", f"/Users/{self.name}", key, value],
            f"setting {key} of {self.name}",
        )

    def create(self):
        params = self.params
        if not params["password"]:
            self.module.fail_json(
                msg=f"password is required to create the user {self.name}: give the password the "
                "person logging this user in at the login window will type."
            )
        sysadminctl = self.module.get_bin_path("sysadminctl", required=True)
        home = f"/Users/{self.name}"
        full_name = params["full_name"] or self.name
        argv = [sysadminctl, "-addUser", self.name, "-fullName", full_name]
        if params["uid"] is not None:
            argv += ["-UID", str(params["uid"])]
        argv += ["-shell", params["shell"], "-home", home, "-password", "-"]
        out, err = self.run(argv, f"sysadminctl -addUser {self.name}", data=params["password"])

        if not self.module.check_mode:
            self.verify_created(out, err)
        self.make_home()
        if params["hidden"]:
            self.set_attribute("IsHidden", "1")
        if params["admin"]:
            self.set_admin(True)

        if self.module.check_mode:
            return {
                "name": self.name,
                "uid": params["uid"],
                "gid": 20,
                "full_name": full_name,
                "home": home,
                "shell": params["shell"],
                "hidden": params["hidden"],
                "admin": params["admin"],
            }
        return self.read()

    def make_home(self):
        createhomedir = self.module.get_bin_path("createhomedir", required=True)
        self.run(
            [createhomedir, "-c", "-u", self.name],
            f"createhomedir for {self.name}",
            after_failure=f" The user {self.name} exists without its home folder: once the "
            "cause is fixed, run the task again and it makes the folder.",
        )

    def verify_created(self, out, err):
        """sysadminctl exits 0 on many failures: believe only the directory record."""
        record = read_user_record(self.module, self.dscl, self.name)
        said = sysadminctl_said(out, err)
        if record is None:
            self.module.fail_json(
                msg=f"sysadminctl did not create the user {self.name}: {said}{hint(said)}",
                commands=self.commands,
            )
        wanted_uid = self.params["uid"]
        got = user_facts(record, self.name)
        if wanted_uid is not None and got["uid"] != wanted_uid:
            self.module.fail_json(
                msg=f"sysadminctl created {self.name} with uid {got['uid']}, not {wanted_uid}: "
                f"{said}. Remove the user (state=absent) and create it again.",
                commands=self.commands,
            )

    def update(self, before):
        params = self.params
        if params["uid"] is not None and before["uid"] != params["uid"]:
            self.module.fail_json(
                msg=f"user {self.name} exists with uid {before['uid']}, not {params['uid']}: "
                "macOS does not renumber a user in place. Drop uid from the task, or remove "
                "the user first."
            )
        if before["home"] != f"/Users/{self.name}":
            self.module.warn(
                f"user {self.name} has the home folder {before['home']}, not "
                f"/Users/{self.name}; it is left as it is."
            )
        elif not home_exists(before["home"]):
            # A run stopped between sysadminctl and createhomedir: finish the user first.
            self.make_home()
        after = dict(before)
        if params["full_name"] is not None and before["full_name"] != params["full_name"]:
            self.set_attribute("RealName", params["full_name"])
            after["full_name"] = params["full_name"]
        if before["shell"] != params["shell"]:
            self.set_attribute("UserShell", params["shell"])
            after["shell"] = params["shell"]
        if before["hidden"] != params["hidden"]:
            self.set_attribute("IsHidden", "1" if params["hidden"] else "0")
            after["hidden"] = params["hidden"]
        if before["admin"] != params["admin"]:
            self.set_admin(params["admin"])
            after["admin"] = params["admin"]
        if self.changed and not self.module.check_mode:
            return self.read()
        return after

    def remove(self):
        sysadminctl = self.module.get_bin_path("sysadminctl", required=True)
        argv = [sysadminctl, "-deleteUser", self.name]
        if not self.params["remove_home"]:
            argv.append("-keepHome")
        out, err = self.run(argv, f"sysadminctl -deleteUser {self.name}")
        if self.module.check_mode:
            return
        if read_user_record(self.module, self.dscl, self.name) is not None:
            said = sysadminctl_said(out, err)
            self.module.fail_json(
                msg=f"sysadminctl did not delete the user {self.name}: {said}{hint(said)}",
                commands=self.commands,
            )


def home_exists(path):
    return os.path.isdir(path)


def public(facts):
    """The user as returned and shown in the diff."""
    if not facts:
        return {}
    keys = ("name", "uid", "gid", "full_name", "home", "shell", "hidden", "admin")
    return dict((key, facts.get(key)) for key in keys)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            full_name=dict(type="str"),
            uid=dict(type="int"),
            shell=dict(type="str", default="/bin/zsh"),
            hidden=dict(type="bool", default=True),
            admin=dict(type="bool", default=False),
            password=dict(type="str", no_log=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            remove_home=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    name = module.params["name"]
    if not SHORT_NAME.match(name):
        module.fail_json(
            msg=f"name '{name}' is not a macOS short name: use lower-case letters, digits, "
            "'_', '.' or '-', starting with a letter or '_', at most 31 characters."
        )
    uid = module.params["uid"]
    if uid is not None and not FIRST_LOCAL_UID <= uid <= 2147483647:
        module.fail_json(
            msg=f"uid {uid} is out of range: give {FIRST_LOCAL_UID} or more (below are macOS's "
            "own accounts), or leave uid out."
        )
    shell = module.params["shell"]
    if not shell.startswith("/"):
        module.fail_json(msg=f"shell '{shell}' is not an absolute path, e.g. /bin/zsh.")
    password = module.params["password"]
    if password and ("\n" in password or "\r" in password):
        module.fail_json(
            msg="password holds a line break: sysadminctl reads one line from standard input, "
            "so the user would get only part of it. Give a password without line breaks."
        )

    user = MacUser(module)
    before = user.read()
    if before is not None and before["uid"] is not None and before["uid"] < FIRST_LOCAL_UID:
        module.fail_json(
            msg=f"{name} is a macOS system account (uid {before['uid']}, below "
            f"{FIRST_LOCAL_UID}); this module manages shard users and leaves it alone. Check name."
        )
    if module.params["state"] == "absent":
        if before is not None and before["admin"]:
            module.fail_json(
                msg=f"{name} is an administrator of this Mac, which no shard user is: the module "
                "does not delete it. Check name; delete an administrator by hand if you mean it."
            )
        if before is not None:
            user.remove()
        after = None
    elif before is None:
        after = user.create()
    else:
        after = user.update(before)

    module.exit_json(
        changed=user.changed,
        user=public(after),
        commands=user.commands,
        diff=dict(before=public(before), after=public(after)),
    )


if __name__ == "__main__":
    main()
