"""``pmset``: the lab's stand-in for macOS's power management tool.

The subset the collection uses::

    pmset -g [live]                      the settings in use
    pmset -g custom                      the settings of each power source
    pmset [-a | -c | -b] KEY VALUE ...   change settings (root only)

A Mac mini draws only from AC power, so its one profile is "AC Power": ``-a`` and ``-c``
change it, and ``-b`` (battery) settings are accepted and have nothing to apply to. The
settings live in the host state's ``pmset`` map; keys missing there have the values of a
fresh Mac mini on macOS 14 (sleep 1, autorestart 0, womp 1, ...).

Facts kept from pmset(1): each setting prints as one line, a space, the name padded to 20
columns, a space, the value; ``-g`` heads them with ``System-wide power settings:`` and
``Currently in use:``; ``-g custom`` with ``AC Power:``; sleep, displaysleep and
disksleep take minutes (0 is never); the other settings take 0 or 1; changing a setting
needs root.
"""

import sys
from typing import Dict, List, Optional

from edge_lab.standins import _common
from edge_lab.standins._common import StandinError

USAGE = "Usage: pmset <options>\nSee pmset(1) for details: 'man pmset'"

# A fresh Mac mini's AC profile, in the order pmset prints it.
DEFAULTS = {
    "Sleep On Power Button": 1,
    "autorestart": 0,
    "powernap": 1,
    "networkoversleep": 0,
    "disksleep": 10,
    "sleep": 1,
    "ttyskeepawake": 1,
    "displaysleep": 10,
    "tcpkeepalive": 1,
    "powermode": 0,
    "womp": 1,
}
MINUTES = {"sleep", "displaysleep", "disksleep"}
# Settings changed through a different name than the one printed.
ALIASES = {"powerbutton": "Sleep On Power Button"}
POWER_SOURCES = {"-a", "-c", "-b"}
SETTABLE = (set(DEFAULTS) - set(ALIASES.values())) | set(ALIASES)


def settings() -> Dict[str, int]:
    stored = _common.load_state(_common.lab_root())["pmset"]
    current = dict(DEFAULTS)
    current.update({k: int(v) for k, v in stored.items()})
    return current


def print_settings(values: Dict[str, int]) -> None:
    for key, value in values.items():
        print(f" {key:<20} {value}")


def show(args: List[str]) -> int:
    if args in ([], ["live"]):
        print("System-wide power settings:")
        print("Currently in use:")
        print_settings(settings())
        return 0
    if args == ["custom"]:
        print("AC Power:")
        print_settings(settings())
        return 0
    raise StandinError(USAGE, 1)


def parse_changes(pairs: List[str]) -> Dict[str, int]:
    if not pairs or len(pairs) % 2:
        raise StandinError(USAGE, 1)
    changes = {}
    for key, value in zip(pairs[::2], pairs[1::2]):
        name = ALIASES.get(key, key)
        if key not in SETTABLE:
            raise StandinError(f"pmset: unknown setting '{key}'.\n{USAGE}", 1)
        if not value.isdigit() or (name not in MINUTES and value not in ("0", "1")):
            kind = "minutes (0 for never)" if name in MINUTES else "0 or 1"
            raise StandinError(f"pmset: bad value '{value}' for {key}: give {kind}.", 1)
        changes[name] = int(value)
    return changes


def change(source: str, pairs: List[str]) -> int:
    changes = parse_changes(pairs)
    if not _common.is_root():
        raise StandinError("Error: must be run as root", 1)
    if source == "-b":
        return 0

    def apply(state):
        stored = dict(state.get("pmset") or {})
        stored.update(changes)
        state["pmset"] = stored

    _common.update_state(_common.lab_root(), apply)
    return 0


def _main(args: List[str]) -> int:
    if not args:
        raise StandinError(USAGE, 1)
    if args[0] == "-g":
        return show(args[1:])
    if args[0] in POWER_SOURCES:
        return change(args[0], args[1:])
    if args[0].startswith("-"):
        raise StandinError(USAGE, 1)
    return change("-a", args)


def main(argv: Optional[List[str]] = None) -> int:
    return _common.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
