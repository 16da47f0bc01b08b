"""``xcode-select``: the lab's stand-in for macOS's developer directory tool.

::

    xcode-select -p | --print-path     the developer directory, or an error and exit 2
    xcode-select --install             ask for the Command Line Tools
    xcode-select -v | --version

Whether the Command Line Tools are installed comes from the host state's ``clt`` flag (a
fresh host: installed). Installed, ``-p`` prints ``/Library/Developer/CommandLineTools``;
not installed, it prints macOS's "unable to get active developer directory" error and
exits 2. ``--install`` only asks, as on macOS, where it opens a dialog for a person to
accept: it prints the note on stderr and exits 0, or, when the tools are there already, the error
and exit 1. The lab's ``edge-lab clt install`` is what installs them.
"""

import sys
from typing import List, Optional

from edge_lab.standins import _common
from edge_lab.standins._common import StandinError

CLT_PATH = "/Library/Developer/CommandLineTools"

USAGE = """\
Usage: xcode-select [options]

Print or change the path to the active developer directory.

Options:
  -h, --help                  print this help message and exit
  -p, --print-path            print the path of the active developer directory
  --install                   open a dialog for installation of the command line developer tools
  -v, --version               print the xcode-select version"""

NO_DEVELOPER_DIR = (
    "xcode-select: error: unable to get active developer directory. Use `sudo xcode-select "
    "--switch path/to/Xcode.app` to set one (or see `man xcode-select`)"
)
ALREADY_INSTALLED = (
    'xcode-select: error: command line tools are already installed, use "Software Update" '
    "in System Settings to install updates"
)
INSTALL_REQUESTED = "xcode-select: note: install requested for command line developer tools"


def _main(args: List[str]) -> int:
    if len(args) != 1:
        raise StandinError(f"xcode-select: error: give one option.\n{USAGE}", 1)
    option = args[0]
    if option in ("-h", "--help"):
        print(USAGE)
        return 0
    if option in ("-v", "--version"):
        print("xcode-select version 2406.")
        return 0
    installed = bool(_common.load_state(_common.lab_root())["clt"])
    if option in ("-p", "--print-path"):
        if not installed:
            raise StandinError(NO_DEVELOPER_DIR, 2)
        print(CLT_PATH)
        return 0
    if option == "--install":
        if installed:
            raise StandinError(ALREADY_INSTALLED, 1)
        print(INSTALL_REQUESTED, file=sys.stderr)
        return 0
    raise StandinError(f"xcode-select: error: invalid argument '{option}'\n{USAGE}", 1)


def main(argv: Optional[List[str]] = None) -> int:
    return _common.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
