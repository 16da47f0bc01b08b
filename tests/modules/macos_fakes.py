"""A Mac's directory service as its command-line tools show it, for module tests.

The outputs are those of macOS 14: ``dscl . -read`` prints native attributes with their
``dsAttrTypeNative:`` prefix and puts values holding spaces on their own indented line;
a missing record exits 56 with eDSRecordNotFound on stderr, a refused write 40 with
eDSPermissionError; ``dseditgroup -o checkmember`` exits 0 or 67; ``sysadminctl`` logs to
stderr and exits 0 even when it fails (a uid already in use, a caller that is not root).
"""

import os

DSCL_NOT_FOUND = (
    "<main> attribute status: eDSRecordNotFound\n<dscl_cmd> DS Error: -14136 (eDSRecordNotFound)\n"
)


def sysadminctl_log(text):
    return f"2026-12-03 12:00:00.000 sysadminctl[4242:91234] {text}\n"


class FakeDirectory:
    """Local users and the admin group of one Mac, answering sysadminctl, dscl and friends."""

    def __init__(self):
        self.users = {}
        self.admins = {"admin"}
        self.homes = set()
        self.calls = []
        self.passwords = {}
        self.sysadminctl_refuses = None
        self.next_uid = 502
        # (rc, stdout, stderr) a command answers instead of doing its work, when set.
        self.createhomedir_fails = None
        self.dscl_create_fails = None
        self.dseditgroup_edit_fails = None

    def add(self, name, uid, full_name, shell="/bin/zsh", hidden=False, admin=False, home=None):
        self.users[name] = {
            "uid": uid,
            "gid": 20,
            "full_name": full_name,
            "shell": shell,
            "home": home or f"/Users/{name}",
            "hidden": "1" if hidden else None,
        }
        if admin:
            self.admins.add(name)
        self.homes.add(name)

    def read_output(self, name):
        user = self.users[name]
        lines = [
            f"dsAttrTypeNative:_writers_hint: {name}",
            f"dsAttrTypeNative:_writers_passwd: {name}",
            f"dsAttrTypeNative:_writers_picture: {name}",
        ]
        if user["hidden"] is not None:
            lines.append(f"dsAttrTypeNative:IsHidden: {user['hidden']}")
        lines += [
            "AppleMetaNodeLocation: /Local/Default",
            "AuthenticationAuthority: ;ShadowHash;HASHLIST:<SALTED-SHA512-PBKDF2,"
            f"SRP-RFC5054-4096-SHA512-PBKDF2> ;Kerberosv5;;{name}@LKDC:SHA1.5F0E;LKDC:SHA1.5F0E;",
            "GeneratedUID: 6A1F0C8E-3B7D-4E2A-9C51-0D2B7F3A9E41",
            f"NFSHomeDirectory: {user['home']}",
            "Password: ********",
            "Picture:",
            " /Library/User Pictures/Animals/Eagle.heic",
            f"PrimaryGroupID: {user['gid']}",
        ]
        if " " in user["full_name"]:
            lines += ["RealName:", f" {user['full_name']}"]
        else:
            lines.append(f"RealName: {user['full_name']}")
        lines += [
            f"RecordName: {name}",
            "RecordType: dsRecTypeStandard:Users",
            f"UniqueID: {user['uid']}",
            f"UserShell: {user['shell']}",
        ]
        return "\n".join(lines) + "\n"

    def home_exists(self, path):
        """Whether the home folder at ``path`` is there, as the module looks on a Mac."""
        return any(path == f"/Users/{name}" for name in self.homes)

    def __call__(self, argv, data=None):
        self.calls.append(argv)
        tool = os.path.basename(argv[0])
        return getattr(self, "run_" + tool)(argv[1:], data)

    def run_dscl(self, args, data):
        node, verb, path = args[0], args[1], args[2]
        assert node == "."
        name = path.split("/")[-1]
        if name not in self.users:
            return 56, "", DSCL_NOT_FOUND
        if verb == "-read":
            return 0, self.read_output(name), ""
        if verb == "-create":
            if self.dscl_create_fails:
                return self.dscl_create_fails
            key, value = args[3], args[4]
            field = {"RealName": "full_name", "UserShell": "shell", "IsHidden": "hidden"}[key]
            self.users[name][field] = value
            return 0, "", ""
        raise AssertionError(f"unexpected dscl call {args!r}")

    def run_dseditgroup(self, args, data):
        if args[:2] == ["-o", "checkmember"]:
            name, group = args[3], args[4]
            assert group == "admin"
            if name in self.admins:
                return 0, f"yes {name} is a member of admin\n", ""
            return 67, f"no {name} is NOT a member of admin\n", ""
        if args[:2] == ["-o", "edit"]:
            if self.dseditgroup_edit_fails:
                return self.dseditgroup_edit_fails
            flag, name = args[2], args[3]
            assert args[4:] == ["-t", "user", "admin"]
            if flag == "-a":
                self.admins.add(name)
            else:
                self.admins.discard(name)
            return 0, "", ""
        raise AssertionError(f"unexpected dseditgroup call {args!r}")

    def run_sysadminctl(self, args, data):
        if args[0] == "-addUser":
            name = args[1]
            options = dict(zip(args[2::2], args[3::2]))
            if self.sysadminctl_refuses:
                return 0, "", sysadminctl_log(self.sysadminctl_refuses)
            uid = int(options.get("-UID", self.next_uid))
            owner = next((n for n, u in self.users.items() if u["uid"] == uid), None)
            if owner is not None:
                log = sysadminctl_log("Creating user record…")
                log += sysadminctl_log(f"### Error: UID {uid} is already in use by {owner}.")
                return 0, "", log
            self.next_uid = max(self.next_uid, uid) + 1
            assert options["-password"] == "-"
            self.passwords[name] = data
            self.users[name] = {
                "uid": uid,
                "gid": 20,
                "full_name": options.get("-fullName", name),
                "shell": options.get("-shell", "/bin/zsh"),
                "home": options.get("-home", f"/Users/{name}"),
                "hidden": None,
            }
            log = sysadminctl_log("Creating user record…")
            log += sysadminctl_log(f"Assigning UID: {uid} GID: 20")
            return 0, "", log
        if args[0] == "-deleteUser":
            name = args[1]
            if self.sysadminctl_refuses:
                return 0, "", sysadminctl_log(self.sysadminctl_refuses)
            self.users.pop(name, None)
            self.admins.discard(name)
            if "-keepHome" not in args:
                self.homes.discard(name)
            return 0, "", sysadminctl_log(f"Deleting record for {name}")
        raise AssertionError(f"unexpected sysadminctl call {args!r}")

    def run_createhomedir(self, args, data):
        assert args[:2] == ["-c", "-u"]
        if self.createhomedir_fails:
            return self.createhomedir_fails
        self.homes.add(args[2])
        return 0, f"creating home directories for ({args[2]})\n", ""
