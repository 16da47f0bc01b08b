"""``createhomedir``: the lab's stand-in for macOS's home folder maker.

The subset the collection uses::

    createhomedir -c -u NAME     make NAME's home folder
    createhomedir -c             make the missing home folders of all local users (uid >= 501)

A home folder is a copy of the user template
(``/System/Library/User Template/English.lproj``), owned by the user and the record's
primary group, with the modes macOS gives a new account: the home 0750; Desktop,
Documents, Downloads, Library, Movies, Music and Pictures 0700; Public 0755 with its
``Drop Box`` 0733 (write-only for others). A home that exists is left as it is, so the
command can be run again. Each folder made is reported as ``created "<path>"``; a user
without a record is an error line on stderr and exit 1. Only root may run it.

``install_user_template`` lays out the template a fresh macOS ships, for hosts and tests
that start from an empty tree.
"""

import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from edge_lab.standins import _common
from edge_lab.standins._common import StandinError

USAGE = "usage: createhomedir [-c] [-u <username>]"

TEMPLATE = "/System/Library/User Template/English.lproj"

# Top-level folders of a new home and their modes, as macOS sets them.
HOME_MODE = 0o750
FOLDER_MODES = {
    "Desktop": 0o700,
    "Documents": 0o700,
    "Downloads": 0o700,
    "Library": 0o700,
    "Movies": 0o700,
    "Music": 0o700,
    "Pictures": 0o700,
    "Public": 0o755,
}
DROP_BOX_MODE = 0o733
LIBRARY_FOLDERS = ("Application Support", "Caches", "Logs", "Preferences")


def install_user_template(root: Path) -> Path:
    """Lay out macOS's user template under ``root`` (nothing is changed if it exists)."""
    template = _common.under(root, TEMPLATE)
    if template.is_dir():
        return template
    for folder, mode in FOLDER_MODES.items():
        (template / folder).mkdir(parents=True, exist_ok=True)
        os.chmod(template / folder, mode)
    for folder in LIBRARY_FOLDERS:
        (template / "Library" / folder).mkdir(exist_ok=True)
    drop_box = template / "Public" / "Drop Box"
    drop_box.mkdir(exist_ok=True)
    os.chmod(drop_box, DROP_BOX_MODE)
    return template


def make_home(root: Path, entry: _common.PasswdEntry) -> bool:
    """Copy the template into the user's home; False when the home already existed."""
    home = _common.under(root, entry.home)
    if home.exists() or home.is_symlink():
        return False
    template = _common.under(root, TEMPLATE)
    if not template.is_dir():
        raise StandinError(
            f"createhomedir: the user template {TEMPLATE} is missing on this host: "
            "restore it, then run createhomedir again."
        )
    home.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(template, home, symlinks=True)
    for dirpath, dirnames, filenames in os.walk(home):
        os.chown(dirpath, entry.uid, entry.gid)
        for child in dirnames + filenames:
            os.chown(os.path.join(dirpath, child), entry.uid, entry.gid, follow_symlinks=False)
    os.chmod(home, HOME_MODE)
    for folder, mode in FOLDER_MODES.items():
        if (home / folder).is_dir():
            os.chmod(home / folder, mode)
    if (home / "Public" / "Drop Box").is_dir():
        os.chmod(home / "Public" / "Drop Box", DROP_BOX_MODE)
    print(f'created "{entry.home}"')
    return True


def _main(args: List[str]) -> int:
    user = None
    create = False
    i = 0
    while i < len(args):
        if args[i] == "-c":
            create = True
            i += 1
        elif args[i] == "-u" and i + 1 < len(args):
            user = args[i + 1]
            i += 2
        else:
            raise StandinError(f"createhomedir: unsupported option {args[i]}\n{USAGE}", 1)
    if not create:
        raise StandinError(f"createhomedir: give -c to create home folders.\n{USAGE}", 1)
    if not _common.is_root():
        raise StandinError("createhomedir: must be run as root", 1)

    root = _common.lab_root()
    accounts = _common.read_accounts(root)
    if user is not None:
        entry = accounts.user(user)
        if entry is None:
            raise StandinError(f"createhomedir: user {user} not found in the local node", 1)
        make_home(root, entry)
        return 0
    for entry in accounts.passwd:
        user_made = _common.FIRST_USER_UID <= entry.uid != _common.UNSET_ID
        if user_made and entry.home.startswith("/Users/"):
            make_home(root, entry)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return _common.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
