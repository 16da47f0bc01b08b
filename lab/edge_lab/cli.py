"""``edge-lab``: bring the lab up and down, reach its hosts, and play the human steps."""

import argparse
import os
import sys

from . import hosts, humans, lab
from .layout import BadInput, LabError, host_by_name, lab_dir

ENVIRONMENT = """environment (defaults suit one lab per machine; tests set them to run beside it):
  EDGE_LAB_DIR            the lab's files (default: .lab at the repository root)
  EDGE_LAB_INVENTORY      where up writes hosts.yml (default: inventories/lab)
  EDGE_LAB_NET            the hosts' addresses, NET.1, NET.2, ... (default: 127.0.1)
  EDGE_LAB_BACKEND_PORT   the reference backend's port on 127.0.0.1 (default: 8787)
  EDGE_LAB_HEALTH_PORT_BASE  host N's relays get health ports from BASE + 100 * N (default:
                          47000 on 127.0.1, else a range of its own per EDGE_LAB_NET)
"""


def _parser():
    parser = argparse.ArgumentParser(
        prog="edge-lab",
        description=__doc__,
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start the hosts, backend and carrier")
    up.add_argument("--hosts", type=int, default=2, help="number of hosts (default 2)")
    down = commands.add_parser("down", help="stop everything the lab runs")
    down.add_argument("--purge", action="store_true", help="also remove the lab's files")
    commands.add_parser("status", help="show hosts, backend and carrier")

    ssh = commands.add_parser("ssh", help="log in to a host as admin over SSH")
    ssh.add_argument("host")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    run = commands.add_parser("exec", help="run a command as root inside a host")
    run.add_argument("host")
    run.add_argument("cmd", nargs=argparse.REMAINDER)

    cut = commands.add_parser("cut", help="cut a host off: freeze all its processes")
    cut.add_argument("host")
    restore = commands.add_parser("restore", help="undo cut: the host's processes continue")
    restore.add_argument("host")

    gui = commands.add_parser("gui", help="log a user in or out at the GUI")
    gui.add_argument("action", choices=("login", "logout"))
    gui.add_argument("host")
    gui.add_argument("user")
    imessage = commands.add_parser("imessage", help="sign a user in to iMessage")
    imessage.add_argument("action", choices=("signin",))
    imessage.add_argument("host")
    imessage.add_argument("user")
    imessage.add_argument("phone")
    for verb in ("grant", "revoke"):
        grant = commands.add_parser(verb, help=f"{verb} Full Disk Access or Automation")
        grant.add_argument("permission", choices=("fda", "automation"))
        grant.add_argument("host")
        grant.add_argument("user", nargs="?", help="the user (automation only)")
    clt = commands.add_parser("clt", help="install or remove the Command Line Tools")
    clt.add_argument("action", choices=("install", "remove"))
    clt.add_argument("host")

    phone = commands.add_parser("phone", help="the lab's phone network")
    phone_commands = phone.add_subparsers(dest="phone_command", required=True)
    send = phone_commands.add_parser("send", help="deliver an incoming message")
    send.add_argument("--to", required=True, help="the lab account's phone number")
    send.add_argument("--from", dest="sender", required=True, help="the sender's handle")
    send.add_argument("--attributed-body", help="file with a typedstream attributedBody")
    send.add_argument("text")
    replay = phone_commands.add_parser(
        "replay",
        help="deliver the message rows of another chat.db as new arrivals",
        description="Copy the message rows of a Messages chat.db (a copy from a Mac, any macOS "
        "release) into the lab account's chat.db as new rows, with their chats, handles and "
        "attachments; guids and dates are kept. Attachment files are looked for beside "
        "SOURCE_DB (Attachments/...). Exit status 2: bad input, nothing written.",
    )
    replay.add_argument(
        "--to", required=True, metavar="PHONE", help="the lab account's phone number"
    )
    replay.add_argument("--limit", type=int, metavar="N", help="copy at most N rows, oldest first")
    replay.add_argument(
        "--since-rowid",
        type=int,
        default=0,
        metavar="R",
        help="copy only the source's rows with a ROWID above R (default 0: from the first)",
    )
    replay.add_argument(
        "--now",
        action="store_true",
        help="date the rows at the replay rather than keeping their own dates",
    )
    replay.add_argument("source_db", metavar="SOURCE_DB", help="the chat.db to copy rows from")
    return parser


def _run(args):
    if args.command == "up":
        lab.up(args.hosts)
    elif args.command == "down":
        lab.down(purge=args.purge)
    elif args.command == "status":
        lab.status()
    elif args.command == "ssh":
        host = host_by_name(args.host)
        argv = lab.ssh_command(lab_dir(), host) + args.cmd
        os.execvp(argv[0], argv)
    elif args.command == "exec":
        if not args.cmd:
            raise LabError("edge-lab exec needs a command to run, e.g. edge-lab exec mini-01 id")
        return lab.exec_in(host_by_name(args.host), args.cmd).returncode
    elif args.command == "cut":
        count = hosts.cut(host_by_name(args.host))
        print(f"{args.host}  cut off ({count} processes stopped)")
    elif args.command == "restore":
        was_cut = hosts.restore(host_by_name(args.host))
        print(f"{args.host}  {'restored' if was_cut else 'was not cut off'}")
    elif args.command == "gui":
        humans.gui(args.action, args.host, args.user)
    elif args.command == "imessage":
        humans.imessage_signin(args.host, args.user, args.phone)
    elif args.command in ("grant", "revoke"):
        if args.permission == "fda":
            if args.user:
                raise LabError(
                    "Full Disk Access is granted per host, not per user; "
                    f"run edge-lab {args.command} fda {args.host}"
                )
            humans.fda(args.command, args.host)
        else:
            if not args.user:
                raise LabError(
                    f"automation needs a user: edge-lab {args.command} automation {args.host} USER"
                )
            humans.automation(args.command, args.host, args.user)
    elif args.command == "clt":
        humans.clt(args.action, args.host)
    elif args.command == "phone" and args.phone_command == "replay":
        humans.phone_replay(
            args.to, args.source_db, limit=args.limit, since_rowid=args.since_rowid, now=args.now
        )
    elif args.command == "phone":
        humans.phone_send(args.to, args.sender, args.text, args.attributed_body)
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except BadInput as error:
        print(f"edge-lab: {error}", file=sys.stderr)
        return 2
    except LabError as error:
        print(f"edge-lab: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
