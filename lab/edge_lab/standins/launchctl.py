"""macOS's ``launchctl``, played by the lab: a client of the host's launchd stand-in.

The subset the collection, the relay and an operator use, with the messages and exit
statuses of macOS 14: ``bootstrap``, ``bootout``, ``print``, ``kickstart [-k]``, ``kill``,
``asuser``, ``list`` and ``help``. Anything else is a usage error, as launchctl reports it.
"""

import os
import signal
import sys
from typing import List, Optional

from edge_lab import launchd

EX_USAGE = 64

USAGE = """Usage: launchctl <subcommand> ... | help [subcommand]
Many subcommands take a target specifier that refers to a domain or service
within that domain. The available specifier forms are:

system/[service-name]
gui/<uid>/[service-name]

Subcommands this host supports:
\tbootstrap       Bootstraps a domain or a service into a domain.
\tbootout         Tears down a domain or removes a service from a domain.
\tprint           Prints a description of a domain or service.
\tkickstart       Forces an existing service to start.
\tkill            Sends a signal to the service instance.
\tasuser          Execute a program in the bootstrap context of a given user.
\tlist            Lists information about services.
\thelp            Prints the usage for a given subcommand.
"""

SUBCOMMAND_USAGE = {
    "bootstrap": "Usage: launchctl bootstrap <domain-target> [service-path, service-path2, ...]",
    "bootout": (
        "Usage: launchctl bootout <domain-target> [service-path1, service-path2, ...] "
        "| <service-target>\n<service-target> takes a form of <domain-target>/<service-id>."
    ),
    "print": "Usage: launchctl print <domain-target> | <service-target>",
    "kickstart": "Usage: launchctl kickstart [-k] [-p] <service-target>",
    "kill": "Usage: launchctl kill <signal-name|signal-number> <service-target>",
    "asuser": "Usage: launchctl asuser <UID> <program> [args...]",
}

# How the asuser context reaches the Messages stand-in: launchctl asuser keeps the
# caller's uid (root) but moves it into the user's session, where its Apple events go.
ASUSER_ENV = "EDGE_LAB_ASUSER"


def _usage(subcommand: Optional[str] = None) -> int:
    text = SUBCOMMAND_USAGE.get(subcommand, USAGE) if subcommand else USAGE
    print(text.rstrip("\n"), file=sys.stderr)
    return EX_USAGE


def _is_domain(target: str) -> bool:
    if target == "system":
        return True
    kind, _, uid = target.partition("/")
    return kind == "gui" and uid.isdigit()


def _is_service(target: str) -> bool:
    domain, _, label = target.rpartition("/")
    return bool(label) and _is_domain(domain)


def _call(op: str, **args) -> int:
    answer = launchd.request(launchd.default_socket_path(), op, **args)
    if answer.get("out"):
        sys.stdout.write(answer["out"])
    if answer.get("err"):
        print(answer["err"], file=sys.stderr)
    return int(answer.get("status", 1))


def _bootstrap(args: List[str]) -> int:
    if len(args) < 2 or not _is_domain(args[0]):
        return _usage("bootstrap")
    paths = [os.path.abspath(p) for p in args[1:]]
    return _call("bootstrap", domain=args[0], paths=paths)


def _bootout(args: List[str]) -> int:
    if len(args) == 1 and _is_service(args[0]):
        return _call("bootout", target=args[0])
    if len(args) >= 2 and _is_domain(args[0]):
        return _call("bootout", target=args[0], paths=[os.path.abspath(p) for p in args[1:]])
    print("Unrecognized target specifier.", file=sys.stderr)
    return _usage("bootout")


def _print(args: List[str]) -> int:
    if len(args) != 1 or not (_is_domain(args[0]) or _is_service(args[0])):
        return _usage("print")
    return _call("print", target=args[0])


def _kickstart(args: List[str]) -> int:
    kill = False
    while args and args[0].startswith("-"):
        flag = args.pop(0)
        if flag == "-k":
            kill = True
        elif flag != "-p":
            return _usage("kickstart")
    if len(args) != 1 or not _is_service(args[0]):
        return _usage("kickstart")
    return _call("kickstart", target=args[0], kill=kill)


def _signal_number(name: str) -> Optional[int]:
    """A signal by number or by name, with or without SIG (9, KILL, SIGKILL)."""
    if name.isdigit():
        number = int(name)
        return number if 0 < number < signal.NSIG else None
    spelled = name.upper() if name.upper().startswith("SIG") else "SIG" + name.upper()
    member = getattr(signal.Signals, spelled, None) if spelled.isidentifier() else None
    return int(member) if member is not None else None


def _kill(args: List[str]) -> int:
    if len(args) != 2 or not _is_service(args[1]):
        return _usage("kill")
    number = _signal_number(args[0])
    if number is None:
        print(f"Unrecognized signal: {args[0]}", file=sys.stderr)
        return _usage("kill")
    return _call("kill", target=args[1], signal_number=number)


def _help(args: List[str]) -> int:
    text = SUBCOMMAND_USAGE.get(args[0], USAGE) if args else USAGE
    print(text.rstrip("\n"))
    return 0


def _asuser(args: List[str]) -> int:
    """Replace this process with the command, in the user's session."""
    if len(args) < 2 or not args[0].isdigit():
        return _usage("asuser")
    if os.geteuid() != 0:
        print("Could not switch to audit session: 1: Operation not permitted", file=sys.stderr)
        return 1
    env = dict(os.environ, **{ASUSER_ENV: args[0]})
    try:
        os.execvpe(args[1], args[1:], env)
    except OSError as exc:
        print(f"launchctl: {args[1]}: {exc.strerror}", file=sys.stderr)
        return 126 if isinstance(exc, PermissionError) else 127


def _list(args: List[str]) -> int:
    if args:
        return _usage()
    return _call("list")


SUBCOMMANDS = {
    "bootstrap": _bootstrap,
    "bootout": _bootout,
    "print": _print,
    "kickstart": _kickstart,
    "kill": _kill,
    "asuser": _asuser,
    "list": _list,
    "help": _help,
}


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        return _usage()
    command = SUBCOMMANDS.get(args[0])
    if command is None:
        print(f"Unrecognized subcommand: {args[0]}", file=sys.stderr)
        return _usage()
    try:
        return command(args[1:])
    except ConnectionError as exc:
        print(f"launchctl: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
