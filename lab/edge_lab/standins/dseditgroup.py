"""``dseditgroup``: the lab's stand-in for macOS's group record editor.

The subset the collection uses::

    dseditgroup -o checkmember -m NAME GROUP
    dseditgroup -o edit -a NAME -t user GROUP
    dseditgroup -o edit -d NAME -t user GROUP

Group records are the host's ``/etc/group`` lines. Membership counts as on macOS: a user
is a member of a group it is listed in, and of its primary group.

Facts kept from macOS: ``checkmember`` prints ``yes NAME is a member of GROUP`` and exits
0, or ``no NAME is NOT a member of GROUP`` and exits 67 (EX_NOUSER, sysexits(3)); usage
errors exit 64 (EX_USAGE). ``edit`` needs root (or directory credentials, which the lab
has none of); adding a member twice or removing an absent one changes nothing.
"""

import sys
from pathlib import Path
from typing import List, Optional

from edge_lab.standins import _common
from edge_lab.standins._common import StandinError

USAGE = """\
Usage: dseditgroup [-pqv] [-o edit] [-a addmember] [-d deletemember] [-t membertype] groupname
       dseditgroup [-o checkmember] [-m member] groupname
membertype is 'user' (the only member type of the lab's dseditgroup)"""


def usage_error(detail: str) -> StandinError:
    return StandinError(f"{detail}\n{USAGE}", _common.EX_USAGE)


def parse(args: List[str]):
    options = {}
    rest = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-o", "-m", "-a", "-d", "-t"):
            if i + 1 >= len(args):
                raise usage_error(f"Option {arg} needs a value.")
            options[arg] = args[i + 1]
            i += 2
        elif arg in ("-q", "-v", "-p"):
            i += 1
        elif arg.startswith("-"):
            raise usage_error(f"Unrecognized option: {arg}")
        else:
            rest.append(arg)
            i += 1
    if len(rest) != 1:
        raise usage_error("Give exactly one group name.")
    return options, rest[0]


def check_member(root: Path, member: str, group_name: str) -> int:
    accounts = _common.read_accounts(root)
    group = accounts.group(group_name)
    if group is None:
        raise StandinError("Group not found.", _common.EX_USAGE)
    user = accounts.user(member)
    if user is None:
        raise StandinError("Unable to find the user record", _common.EX_NOUSER)
    if member in group.members or user.gid == group.gid:
        print(f"yes {member} is a member of {group_name}")
        return 0
    print(f"no {member} is NOT a member of {group_name}")
    return _common.EX_NOUSER


def edit(root: Path, options: dict, group_name: str) -> int:
    adding = "-a" in options
    if adding == ("-d" in options):
        raise usage_error("Give one of -a (add a member) or -d (remove a member).")
    if options.get("-t", "user") != "user":
        raise usage_error(f"Member type '{options['-t']}' is not supported: use -t user.")
    member = options["-a"] if adding else options["-d"]
    if not _common.is_root():
        raise StandinError("Username and password must be provided.", _common.EX_USAGE)
    with _common.edit_accounts(root) as accounts:
        group = accounts.group(group_name)
        if group is None:
            raise StandinError("Group not found.", _common.EX_USAGE)
        if accounts.user(member) is None:
            raise StandinError("Record was not found.", _common.EX_NOUSER)
        if adding and member not in group.members:
            group.members.append(member)
        elif not adding:
            group.members = [m for m in group.members if m != member]
    return 0


def _main(args: List[str]) -> int:
    options, group_name = parse(args)
    operation = options.get("-o")
    root = _common.lab_root()
    if operation == "checkmember":
        if "-m" not in options:
            raise usage_error("checkmember needs -m MEMBER.")
        return check_member(root, options["-m"], group_name)
    if operation == "edit":
        return edit(root, options, group_name)
    raise usage_error(f"Operation '{operation}' is not supported: use -o checkmember or -o edit.")


def main(argv: Optional[List[str]] = None) -> int:
    return _common.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
