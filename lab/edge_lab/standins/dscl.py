"""``dscl``: the lab's stand-in for macOS's Directory Service command line utility.

The subset the collection uses, on the local node (``.``) only::

    dscl . -read /Users/NAME [KEY ...]      dscl . -read /Groups/NAME [KEY ...]
    dscl . -list /Users [KEY]               dscl . -list /Groups [KEY]
    dscl . -create /Users/NAME [KEY [VALUE ...]]
    dscl . -delete /Users/NAME [KEY]

User records are the host's ``/etc/passwd`` lines (UniqueID, PrimaryGroupID,
NFSHomeDirectory, UserShell and RealName map onto its fields); attributes Linux has no
field for, such as IsHidden, live in the record's side file. Group records are
``/etc/group`` lines (PrimaryGroupID, GroupMembership).

Facts kept from macOS:

- ``-read`` prints one ``Key: value`` line per attribute, several values separated by
  spaces; when a value contains a space, the key stands alone on its line and each value
  follows on its own line indented by one space (dscl(1), and what Ansible's user module
  parses).
- A failed directory call prints ``<dscl_cmd> DS Error: <status> (<name>)`` on stderr and
  exits with the negated status, truncated to 8 bits as every exit status is: -14136
  (eDSRecordNotFound) exits 56, -14120 (eDSPermissionError) exits 40.
- Writes to the local node need root; others get eDSPermissionError, after the
  ``<main> attribute status:`` line dscl prints for a refused write.
- A key the record lacks prints ``No such key: KEY`` on stderr.
"""

import sys
from pathlib import Path
from typing import Dict, List, Optional

from edge_lab.standins import _common
from edge_lab.standins._common import StandinError

USAGE = """\
dscl (v20.0)
usage: dscl [options] [<datasource> [<command>]]
datasource:
    .                            (the local node; the only data source of the lab's dscl)
commands:
    -read      <path> [<key>...]
    -list      <path> [<key>]
    -create    <record_path> [<key> [<val>...]]
    -delete    <path> [<key>]"""

RECORD_NOT_FOUND = (-14136, "eDSRecordNotFound")
PERMISSION_ERROR = (-14120, "eDSPermissionError")
UNKNOWN_NODE = (-14009, "eDSUnknownNodeName")
INVALID_VALUE = (-14157, "eDSInvalidAttrValueRef")

# dscl exits 181 when a -read names only keys the record lacks.
EXIT_NO_SUCH_KEY = 181

# Keys backed by a passwd field; every other user attribute lives in the side file.
PASSWD_KEYS = ("UniqueID", "PrimaryGroupID", "NFSHomeDirectory", "UserShell", "RealName")


def ds_error(status, stage: str = "") -> StandinError:
    number, name = status
    lines = [f"<main> attribute status: {name}"] if stage == "write" else []
    lines.append(f"<dscl_cmd> DS Error: {number} ({name})")
    return StandinError("\n".join(lines), (-number) & 0xFF)


def format_attribute(key: str, values: List[str]) -> str:
    if any(" " in v for v in values):
        return f"{key}:\n" + "\n".join(f" {v}" for v in values)
    return f"{key}: " + " ".join(values)


def user_attributes(root: Path, entry: _common.PasswdEntry) -> Dict[str, List[str]]:
    side = _common.load_record_side(root, entry.name)
    unset = set(side.get("unset", []))
    attrs: Dict[str, List[str]] = {
        "AppleMetaNodeLocation": ["/Local/Default"],
        "NFSHomeDirectory": [entry.home],
        "Password": ["********"],
        "PrimaryGroupID": [str(entry.gid)],
        "RecordName": [entry.name],
        "RecordType": ["dsRecTypeStandard:Users"],
        "UniqueID": [str(entry.uid)],
        "UserShell": [entry.shell],
    }
    if entry.real_name:
        attrs["RealName"] = [entry.real_name]
    for key in unset:
        attrs.pop(key, None)
    for key, values in side.get("attributes", {}).items():
        attrs[key] = list(values)
    return attrs


def group_attributes(group: _common.GroupEntry) -> Dict[str, List[str]]:
    attrs = {
        "AppleMetaNodeLocation": ["/Local/Default"],
        "Password": ["*"],
        "PrimaryGroupID": [str(group.gid)],
        "RecordName": [group.name],
        "RecordType": ["dsRecTypeStandard:Groups"],
    }
    if group.members:
        attrs["GroupMembership"] = list(group.members)
    return attrs


def parse_path(path: str):
    """('/Users' | '/Groups', name or None) for a record or record-type path."""
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in ("Users", "Groups") or len(parts) > 2:
        raise StandinError(f"{path}: Invalid Path", _common.EX_USAGE)
    return "/" + parts[0], (parts[1] if len(parts) == 2 else None)


def record_attributes(root: Path, kind: str, name: str) -> Dict[str, List[str]]:
    accounts = _common.read_accounts(root)
    if kind == "/Users":
        entry = accounts.user(name)
        if entry is None:
            raise ds_error(RECORD_NOT_FOUND)
        return user_attributes(root, entry)
    group = accounts.group(name)
    if group is None:
        raise ds_error(RECORD_NOT_FOUND)
    return group_attributes(group)


def cmd_read(root: Path, args: List[str]) -> int:
    if not args:
        raise StandinError("-read: a record path is required.\n" + USAGE, _common.EX_USAGE)
    kind, name = parse_path(args[0])
    if name is None:
        raise StandinError(f"{args[0]}: Invalid Path", _common.EX_USAGE)
    attrs = record_attributes(root, kind, name)
    keys = args[1:] or sorted(attrs)
    found = [k for k in keys if k in attrs]
    for key in keys:
        if key in attrs:
            print(format_attribute(key, attrs[key]))
        else:
            print(f"No such key: {key}", file=sys.stderr)
    return 0 if found else EXIT_NO_SUCH_KEY


def cmd_list(root: Path, args: List[str]) -> int:
    if not args or len(args) > 2:
        raise StandinError("-list: a path and at most one key.\n" + USAGE, _common.EX_USAGE)
    kind, name = parse_path(args[0])
    if name is not None:
        # Listing a record lists its attribute names.
        for key in sorted(record_attributes(root, kind, name)):
            print(key)
        return 0
    accounts = _common.read_accounts(root)
    if kind == "/Users":
        records = {u.name: user_attributes(root, u) for u in accounts.passwd}
    else:
        records = {g.name: group_attributes(g) for g in accounts.groups}
    names = sorted(records)
    if len(args) == 1:
        for record in names:
            print(record)
        return 0
    key = args[1]
    rows = [(n, " ".join(records[n][key])) for n in names if key in records[n]]
    # Values line up in one column after the longest record name.
    width = max((len(n) for n, _ in rows), default=0) + 1
    for record, value in rows:
        print(f"{record.ljust(width)}{value}")
    return 0


def _single_value(key: str, values: List[str]) -> str:
    if len(values) != 1:
        raise StandinError(
            f"{key} takes exactly one value, got {len(values)}: give one value after the key.",
            _common.EX_USAGE,
        )
    return values[0]


def _numeric(key: str, value: str) -> int:
    if not value.isdigit():
        raise StandinError(
            f"{key} '{value}' is not a number: give a whole number such as 501.\n"
            + ds_error(INVALID_VALUE).message,
            (-INVALID_VALUE[0]) & 0xFF,
        )
    return int(value)


def cmd_create(root: Path, args: List[str]) -> int:
    if not args:
        raise StandinError("-create: a record path is required.\n" + USAGE, _common.EX_USAGE)
    kind, name = parse_path(args[0])
    if kind != "/Users" or name is None:
        raise StandinError(
            f"{args[0]}: the lab's dscl creates only user records (/Users/NAME).", _common.EX_USAGE
        )
    if not _common.is_root():
        raise ds_error(PERMISSION_ERROR, "write")
    key = args[1] if len(args) > 1 else None
    values = args[2:]
    if key == "RecordName":
        raise StandinError(
            "RecordName cannot be changed by the lab's dscl: delete the record and create it "
            "under the new name.",
            _common.EX_USAGE,
        )
    if key in ("UniqueID", "PrimaryGroupID"):
        number = _numeric(key, _single_value(key, values))
    with _common.edit_accounts(root) as accounts:
        side = _common.load_record_side(root, name)
        entry = accounts.user(name)
        if entry is None:
            # A new record has none of the passwd-backed attributes until they are set.
            entry = _common.PasswdEntry(
                name, "*", _common.UNSET_ID, _common.UNSET_ID, "", "/var/empty", "/usr/bin/false"
            )
            accounts.passwd.append(entry)
            accounts.set_password_hash(name, "*")
            side["unset"] = ["NFSHomeDirectory", "PrimaryGroupID", "UniqueID", "UserShell"]
        if key is None:
            pass
        elif key == "UniqueID":
            owner = accounts.user_by_uid(number)
            if owner is not None and owner.name != name:
                raise StandinError(
                    f"UniqueID {number} already belongs to {owner.name}: choose a free id.", 1
                )
            entry.uid = number
        elif key == "PrimaryGroupID":
            entry.gid = number
        elif key == "NFSHomeDirectory":
            entry.home = _single_value(key, values)
        elif key == "UserShell":
            entry.shell = _single_value(key, values)
        elif key == "RealName":
            real_name = _single_value(key, values)
            if ":" in real_name or "," in real_name or "\n" in real_name:
                raise StandinError(
                    f"RealName '{real_name}' holds ':', ',' or a line break, which the "
                    "host's passwd file cannot store: choose a name without them.",
                    _common.EX_USAGE,
                )
            entry.gecos = real_name
        else:
            side.setdefault("attributes", {})[key] = list(values)
        if key in PASSWD_KEYS and key in side.get("unset", []):
            side["unset"] = [k for k in side["unset"] if k != key]
        if not side.get("unset"):
            side.pop("unset", None)
        _common.save_record_side(root, name, side)
    return 0


def cmd_delete(root: Path, args: List[str]) -> int:
    if len(args) not in (1, 2):
        raise StandinError(
            "-delete: a record path and at most one key.\n" + USAGE, _common.EX_USAGE
        )
    kind, name = parse_path(args[0])
    if kind != "/Users" or name is None:
        raise StandinError(
            f"{args[0]}: the lab's dscl deletes only user records (/Users/NAME).", _common.EX_USAGE
        )
    if not _common.is_root():
        raise ds_error(PERMISSION_ERROR, "write")
    with _common.edit_accounts(root) as accounts:
        if accounts.user(name) is None:
            raise ds_error(RECORD_NOT_FOUND)
        side = _common.load_record_side(root, name)
        if len(args) == 1:
            accounts.remove_user(name)
            _common.save_record_side(root, name, {})
            return 0
        key = args[1]
        if key not in side.get("attributes", {}):
            raise StandinError(
                f"{key} can only be deleted when it is one of the record's extra attributes "
                f"({', '.join(sorted(side.get('attributes', {}))) or 'none set'}).",
                _common.EX_USAGE,
            )
        del side["attributes"][key]
        if not side["attributes"]:
            del side["attributes"]
        _common.save_record_side(root, name, side)
    return 0


COMMANDS = {"-read": cmd_read, "-list": cmd_list, "-create": cmd_create, "-delete": cmd_delete}


def _main(args: List[str]) -> int:
    if len(args) < 2:
        raise StandinError(
            "The lab's dscl has no interactive mode: give a data source and a command.\n" + USAGE,
            _common.EX_USAGE,
        )
    source, command, rest = args[0], args[1], args[2:]
    if source != ".":
        raise StandinError(f"Data source ({source}) is not valid.", (-UNKNOWN_NODE[0]) & 0xFF)
    handler = COMMANDS.get(command)
    if handler is None:
        raise StandinError(f"Invalid command: {command}\n" + USAGE, _common.EX_USAGE)
    return handler(_common.lab_root(), rest)


def main(argv: Optional[List[str]] = None) -> int:
    return _common.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
