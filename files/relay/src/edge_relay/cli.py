"""`edge-relay run | check-config | doctor | parked [--retry [GUID]] --config PATH`, `--version`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import List, Optional

from edge_relay import __version__
from edge_relay.config import ConfigError, load

EXIT_BAD_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-relay",
        description="Bridges one shard's Messages account to the chat backend.",
    )
    parser.add_argument("--version", action="version", version=f"edge-relay {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in (
        ("run", "run the relay until SIGTERM, then drain and exit"),
        ("check-config", "check the configuration and exit (0 when usable, 2 otherwise)"),
        ("doctor", "check everything the shard needs, one line each (exit 0 all good, 1 not)"),
        ("parked", "list the inbound events the backend would not take, or retry them"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", required=True, metavar="PATH", help="the relay's config.yml")
        if name == "parked":
            sub.add_argument(
                "--retry",
                nargs="?",
                const=True,
                metavar="GUID",
                help="forward the parked events again (only GUID's when given)",
            )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("edge-relay: choose a command: run, check-config, doctor or parked", file=sys.stderr)
        return EXIT_BAD_CONFIG

    if args.command == "doctor":
        from edge_relay import doctor

        return doctor.run(args.config)

    if args.command == "parked":
        from edge_relay import parked

        return parked.run(args.config, args.retry, err=lambda line: print(line, file=sys.stderr))

    try:
        config = load(args.config)
    except ConfigError as error:
        print(f"edge-relay: {args.config} has {len(error.problems)} problem(s):", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_BAD_CONFIG

    if args.command == "check-config":
        print(f"edge-relay: {args.config} is usable for shard {config.shard_id}")
        return 0

    logging.basicConfig(
        stream=sys.stderr,
        level=config.log_level,
        format=f"%(asctime)s {config.shard_id} %(levelname)s %(message)s",
    )
    # aiohttp's own loggers could echo request details; the relay logs what matters itself.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)

    from edge_relay.relay import Relay

    try:
        relay = Relay(config)
    except OSError as error:
        print(f"edge-relay: cannot open the state in {config.state_dir}: {error}", file=sys.stderr)
        return 1
    return asyncio.run(relay.run())
