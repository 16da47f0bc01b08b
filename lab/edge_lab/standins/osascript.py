"""macOS's ``osascript``, played by the lab for one script only: the relay's Messages script.

``osascript FILE mode target kind value...`` runs the relay's script, whose ``run`` handler
gets the arguments: mode ``chat`` sends to ``chat id target``, any other mode to the
participant ``target`` of the iMessage account, then each pair is sent in order: kind
``file`` sends the file at the POSIX path ``value``, any other kind sends ``value`` as text
(the script's ``else``). An odd number of pair items fails where the script would, reading
the missing item. The
Apple events go to the host's Messages stand-in (inside the launchd stand-in), which
checks what Messages and macOS's privacy controls would: a GUI session, the Automation
grant, an iMessage account, and the chat. Failures are reported as osascript reports a
script's execution error, on stderr with exit status 1. Any other script, or ``-e``, is
refused: the lab cannot run AppleScript.
"""

import os
import sys
from pathlib import Path
from typing import List, Optional

from edge_lab import launchd
from edge_lab.standins.launchctl import ASUSER_ENV

RELAY_SCRIPT = (
    Path(__file__).resolve().parents[3] / "files/relay/src/edge_relay/send_messages.applescript"
)

# What the relay ships, for a checkout where the relay's file is not there.
RELAY_SCRIPT_TEXT = """\
-- Sends bubbles and files through Messages, in order.
-- Arguments: mode ("chat" or "handle"), target (chat guid or handle), then pairs of
-- kind ("text" or "file") and value (the text, or the POSIX path of a staged file).
on run argv
	set sendMode to item 1 of argv
	set targetId to item 2 of argv
	tell application "Messages"
		if sendMode is "chat" then
			set recipientRef to chat id targetId
		else
			set imessageAccount to 1st account whose service type = iMessage
			set recipientRef to participant targetId of imessageAccount
		end if
		repeat with i from 3 to (count of argv) by 2
			set partKind to item i of argv
			set partValue to item (i + 1) of argv
			if partKind is "file" then
				send (POSIX file partValue) to recipientRef
			else
				send partValue to recipientRef
			end if
		end repeat
	end tell
end run
"""

REFUSAL = "osascript: this lab only runs the edge relay's Messages script"


def _collapsed(text: str) -> str:
    return " ".join(text.split())


def relay_script_text() -> str:
    try:
        return RELAY_SCRIPT.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RELAY_SCRIPT_TEXT


def _source_range(source: str, statement: str) -> str:
    """The ``start:end`` character range osascript prints for the failing statement."""
    start = source.find(statement)
    return f"{start}:{start + len(statement)}:" if start >= 0 else ""


def _argv_error(script: str, source: str, run_args: List[str]) -> str:
    """What AppleScript says when the run handler reads an argument that is not there."""
    missing = len(run_args) + 1
    items = ", ".join('"{}"'.format(a.replace('"', '\\"')) for a in run_args)
    where = _source_range(source, f"item {missing} of argv")
    return (
        f"{script}:{where} execution error: Can't get item {missing} of {{{items}}}. "
        "Invalid index. (-1719)"
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print(REFUSAL, file=sys.stderr)
        return 1
    script, run_args = args[0], args[1:]
    try:
        source = Path(script).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text script"
        print(f"osascript: {script}: {reason}", file=sys.stderr)
        return 1
    if _collapsed(source) != _collapsed(relay_script_text()):
        print(REFUSAL, file=sys.stderr)
        return 1
    if len(run_args) < 2 or len(run_args) % 2:
        print(_argv_error(script, source, run_args), file=sys.stderr)
        return 1

    mode = "chat" if run_args[0] == "chat" else "handle"
    try:
        answer = launchd.request(
            launchd.default_socket_path(),
            "messages_send",
            mode=mode,
            target=run_args[1],
            parts=[
                ["file" if kind == "file" else "text", value]
                for kind, value in zip(run_args[2::2], run_args[3::2])
            ],
            asuser=os.environ.get(ASUSER_ENV),
        )
    except ConnectionError:
        # No launchd, no session: nothing can answer the Apple events.
        answer = {
            "status": -600,
            "err": "execution error: Messages got an error: Application isn't running. (-600)",
        }
    if answer.get("status", 1) != 0:
        statement = (
            "chat id targetId" if mode == "chat" else "1st account whose service type = iMessage"
        )
        where = _source_range(source, statement)
        print(f"{script}:{where} {answer.get('err', 'execution error')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
