"""``fdesetup``: the lab's stand-in for macOS's FileVault tool, ``status`` only.

``fdesetup status`` prints ``FileVault is On.`` or ``FileVault is Off.`` and exits 0,
for any user, from the host state's ``filevault`` flag (a fresh host: off). FileVault
matters to a fleet because a Mac with it on does not log a user in automatically after a
restart. Every other verb is refused with the usage and exit 1.
"""

import sys
from typing import List, Optional

from edge_lab.standins import _common
from edge_lab.standins._common import StandinError

USAGE = """\
Usage: fdesetup <verb> <options>
  status        Shows the current status of FileVault.
(status is the only verb of the lab's fdesetup)"""


def _main(args: List[str]) -> int:
    if args != ["status"]:
        raise StandinError(USAGE, 1)
    on = bool(_common.load_state(_common.lab_root())["filevault"])
    print("FileVault is On." if on else "FileVault is Off.")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return _common.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
