"""``sw_vers``: the lab's stand-in for macOS's version printer.

::

    sw_vers                  ProductName, ProductVersion and BuildVersion, one per line
    sw_vers -productName     sw_vers -productVersion     sw_vers -buildVersion

The version and build come from the host's state file (``macos``; a fresh host is
macOS 14.6.1, build 23G93). Since macOS 11 the product name is ``macOS``; since macOS 13
each label is followed by two tabs (as seen on macOS 14: ``ProductName:\\t\\tmacOS``).
"""

import sys
from typing import List, Optional

from edge_lab.standins import _common
from edge_lab.standins._common import StandinError

USAGE = "Usage: sw_vers [-productName|-productVersion|-productVersionExtra|-buildVersion]"

PRODUCT_NAME = "macOS"


def _main(args: List[str]) -> int:
    macos = _common.load_state(_common.lab_root())["macos"]
    values = {
        "-productName": PRODUCT_NAME,
        "-productVersion": str(macos["ProductVersion"]),
        "-buildVersion": str(macos["BuildVersion"]),
    }
    if not args:
        print(f"ProductName:\t\t{values['-productName']}")
        print(f"ProductVersion:\t\t{values['-productVersion']}")
        print(f"BuildVersion:\t\t{values['-buildVersion']}")
        return 0
    if len(args) == 1 and args[0] in values:
        print(values[args[0]])
        return 0
    if args == ["-productVersionExtra"]:
        # Only a Rapid Security Response sets the extra version; the lab has none.
        return 0
    raise StandinError(USAGE, 1)


def main(argv: Optional[List[str]] = None) -> int:
    return _common.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
