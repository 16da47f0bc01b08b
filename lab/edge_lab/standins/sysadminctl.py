"""``sysadminctl``: the lab's stand-in for macOS's user account tool.

The subset the collection uses::

    sysadminctl -addUser NAME [-fullName F] [-UID N] [-GID N] [-shell S] [-home H]
                              [-password P | -password -] [-hint H] [-admin]
    sysadminctl -deleteUser NAME [-secure | -keepHome]

``-addUser`` writes the user's record (a passwd line, a shadow line with a crypt(3) hash of
the password, membership of ``staff``, and of ``admin`` with ``-admin``). As in the lab's
split of duties, it does not make the home folder: ``createhomedir -c -u NAME`` does. With
no ``-UID`` it takes the lowest free id from 501 up, as macOS does; the primary group is
staff (20) unless ``-GID`` says otherwise, the shell ``/bin/zsh``, the home ``/Users/NAME``
and the full name the short name. ``-password -`` reads the password from standard input
(one line; with a terminal it prompts without echo), which keeps it off the command line.
``-adminUser``/``-adminPassword`` (credentials for a secure token) are accepted and not
used, since the lab has no secure tokens.

Facts kept from macOS: sysadminctl logs each step on stderr as NSLog lines
(``2024-05-01 10:00:00.000 sysadminctl[1234:5a6b] ...``) and exits 0 even when the step
failed (a taken name or UID, a missing record, a caller that is not root): callers must
read stderr or check the record afterwards. A usage error prints the usage and exits 1.
"""

import getpass
import re
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from edge_lab.standins import _common
from edge_lab.standins._common import StandinError

TOOL = "sysadminctl"

USAGE = """\
Usage: sysadminctl [options]
    -addUser <user name> [-fullName <full name>] [-UID <user ID>] [-GID <group ID>]
             [-shell <path to shell>] [-password <user password>] [-hint <user hint>]
             [-home <full path to home>] [-admin]
    -deleteUser <user name> [-secure || -keepHome]
Pass '-' instead of password in commands above to request prompt."""

# macOS short names: a letter or underscore, then letters, digits, '_', '-' and '.'.
SHORT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,243}$")

ADD_OPTIONS = {"-fullName", "-UID", "-GID", "-shell", "-home", "-password", "-hint"}
ADD_OPTIONS_UNUSED = {"-adminUser", "-adminPassword"}


def usage_error(detail: str) -> StandinError:
    return StandinError(f"{detail}\n{USAGE}", 1)


def parse_options(args: List[str], valued: set, flags: set) -> dict:
    options = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in valued:
            if i + 1 >= len(args):
                raise usage_error(f"Option {arg} needs a value.")
            options[arg] = args[i + 1]
            i += 2
        elif arg in flags:
            options[arg] = True
            i += 1
        else:
            raise usage_error(f"Unrecognized option: {arg}")
    return options


def read_password(name: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"Enter password for {name} : ")
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def _id(option: str, value: str) -> int:
    if not value.isdigit():
        raise usage_error(f"{option} '{value}' is not a number: give a whole number.")
    return int(value)


def add_user(root: Path, name: str, args: List[str]) -> int:
    options = parse_options(args, ADD_OPTIONS | ADD_OPTIONS_UNUSED, {"-admin"})
    if not SHORT_NAME.match(name):
        raise usage_error(
            f"'{name}' is not a valid short name: use letters, digits, '_', '-' and '.', "
            "starting with a letter or '_'."
        )
    uid = _id("-UID", options["-UID"]) if "-UID" in options else None
    gid = _id("-GID", options["-GID"]) if "-GID" in options else _common.STAFF_GID
    full_name = options.get("-fullName", name)
    if any(c in full_name for c in ":,\n"):
        raise usage_error(
            f"-fullName '{full_name}' holds ':', ',' or a line break, which the host's "
            "passwd file cannot store: choose a name without them."
        )

    if not _common.is_root():
        _common.nslog(TOOL, "### Error:-14120 (eDSPermissionError): run sysadminctl as root.")
        return 0

    password = options.get("-password")
    if password == "-":
        password = read_password(name)
    if password is None:
        _common.nslog(TOOL, "----------------------------")
        _common.nslog(
            TOOL,
            "No clear text password or interactive option was specified (adduser, "
            "change/reset password will not allow user to use FDE) !",
        )
        _common.nslog(TOOL, "----------------------------")
        hashed = "*"
    else:
        hashed = _common.hash_password(password)

    _common.nslog(TOOL, "Creating user record…")
    with _common.edit_accounts(root) as accounts:
        if accounts.user(name) is not None:
            _common.nslog(
                TOOL, f"### Error:-14135 (eDSRecordAlreadyExists): user {name} already exists."
            )
            return 0
        if uid is None:
            uid = accounts.next_free_uid()
        else:
            owner = accounts.user_by_uid(uid)
            if owner is not None:
                _common.nslog(TOOL, f"### Error: UID {uid} is already in use by {owner.name}.")
                return 0
        home = options.get("-home", f"/Users/{name}")
        shell = options.get("-shell", "/bin/zsh")
        accounts.passwd.append(_common.PasswdEntry(name, "x", uid, gid, full_name, home, shell))
        accounts.set_password_hash(name, hashed)
        groups = [_common.STAFF_GROUP] + ([_common.ADMIN_GROUP] if "-admin" in options else [])
        for group_name in groups:
            group = accounts.group(group_name)
            if group is not None and name not in group.members:
                group.members.append(name)
        _common.nslog(TOOL, f"Assigning UID: {uid} GID: {gid}")
    return 0


def delete_user(root: Path, name: str, args: List[str]) -> int:
    options = parse_options(args, set(), {"-secure", "-keepHome"})
    if "-secure" in options and "-keepHome" in options:
        raise usage_error("-secure and -keepHome exclude each other: give one of them.")
    if not _common.is_root():
        _common.nslog(TOOL, "### Error:-14120 (eDSPermissionError): run sysadminctl as root.")
        return 0
    with _common.edit_accounts(root) as accounts:
        entry = accounts.user(name)
        if entry is None:
            _common.nslog(TOOL, f"### Error:-14136 (eDSRecordNotFound): no user named {name}.")
            return 0
        _common.nslog(TOOL, f"Deleting record for {name}")
        accounts.remove_user(name)
        _common.save_record_side(root, name, {})
    home = Path(entry.home)
    # Only a folder under /Users is the user's own; a shared path such as /var/empty is not.
    if "-keepHome" not in options and home.parent == Path("/Users") and home.name:
        target = _common.under(root, str(home))
        if target.is_dir() and not target.is_symlink():
            _common.nslog(TOOL, f"Deleting home directory at {home}")
            shutil.rmtree(target)
    return 0


def _main(args: List[str]) -> int:
    if len(args) < 2 or args[0] not in ("-addUser", "-deleteUser"):
        raise usage_error("The lab's sysadminctl supports -addUser and -deleteUser.")
    root = _common.lab_root()
    if args[0] == "-addUser":
        return add_user(root, args[1], args[2:])
    return delete_user(root, args[1], args[2:])


def main(argv: Optional[List[str]] = None) -> int:
    return _common.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
