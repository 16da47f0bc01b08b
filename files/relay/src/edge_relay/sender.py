"""Sending bubbles through Messages with osascript, and finding out whether they went.

The text travels only as arguments of the script's `run` handler, never inside script source.
osascript exiting 0 does not mean the message was sent: Messages writes the outgoing row, and
may mark it failed afterwards. So a send is delivered only once its rows appear with
`is_sent = 1`; a row with `error` set failed; no row within the bound is uncertain, reported
and never retried, since a duplicate bubble is worse than a late one.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Set, Tuple

from edge_relay.chatdb import ChatDB, ChatDBError

SCRIPT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "send_messages.applescript")

APPLESCRIPT_ERRORS = {
    -1743: "Automation not granted: allow the relay to control Messages in System Settings > "
    "Privacy & Security > Automation",
    -600: "Messages is not running or this user has no GUI session: log the user in at the GUI",
    -1728: "Messages does not know this chat or handle",
    -1719: "Messages is not signed in to iMessage: sign this user in to iMessage",
}
ERROR_NUMBER_RE = re.compile(r"\((-?\d+)\)\s*$")


@dataclass(frozen=True)
class SendOutcome:
    status: str  # delivered | failed | uncertain
    detail: str
    delivered_bubbles: int = 0
    guids: Tuple[str, ...] = ()


def script_arguments(parts: List[Any]) -> List[str]:
    """The run handler's arguments after mode and target: a kind and a value per part."""
    arguments: List[str] = []
    for part in parts:
        if isinstance(part, dict):
            arguments += ["file", part["file"]]
        else:
            arguments += ["text", part]
    return arguments


def explain_osascript_failure(returncode: int, stderr: str) -> str:
    """A reason for a failed osascript run, from the AppleScript error number it printed."""
    match = ERROR_NUMBER_RE.search(stderr.strip())
    if not match:
        return f"osascript exited with status {returncode}"
    number = int(match.group(1))
    reason = APPLESCRIPT_ERRORS.get(number, "AppleScript error")
    return f"{reason} (error {number})"


class Sender:
    def __init__(
        self,
        osascript: str,
        chat_db: ChatDB,
        confirm_s: float,
        run_timeout_s: float = 60.0,
        confirm_poll_s: float = 0.2,
    ):
        self.osascript = osascript
        self.chat_db = chat_db
        self.confirm_s = confirm_s
        self.run_timeout_s = run_timeout_s
        self.confirm_poll_s = confirm_poll_s
        self._written_to: Set[str] = set()

    async def first_contact(self, mode: str, target: str) -> bool:
        """Whether this send opens a conversation: a handle this account never wrote to.

        A chat guid names a conversation that exists. When chat.db cannot be read the send is
        counted as a first contact, the cautious side.
        """
        if mode == "chat" or target in self._written_to:
            return False
        try:
            rows = await asyncio.to_thread(self.chat_db.outgoing_after, 0, mode, target)
        except ChatDBError:
            return True
        if rows:
            self._written_to.add(target)
        return not rows

    async def send(self, mode: str, target: str, parts: List[Any]) -> SendOutcome:
        """Sends `parts` (text bubbles, then {"file": path}) in one osascript call."""
        try:
            before = await asyncio.to_thread(self.chat_db.max_rowid)
        except ChatDBError as error:
            # Without chat.db a send could not be confirmed; it would end uncertain.
            return SendOutcome("failed", f"not sent: {error}")

        proc = await asyncio.create_subprocess_exec(
            self.osascript,
            SCRIPT_PATH,
            mode,
            target,
            *script_arguments(parts),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), self.run_timeout_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return await self._confirm(
                before, mode, target, len(parts), "osascript did not finish in time"
            )
        except asyncio.CancelledError:
            # Drain ran out of time: stop osascript; the outcome stays unknown.
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if proc.returncode != 0:
            reason = explain_osascript_failure(proc.returncode, stderr.decode("utf-8", "replace"))
            return SendOutcome("failed", reason)
        outcome = await self._confirm(before, mode, target, len(parts), None)
        if outcome.delivered_bubbles and mode == "handle":
            self._written_to.add(target)
        return outcome

    async def _confirm(
        self, before: int, mode: str, target: str, count: int, note: Optional[str]
    ) -> SendOutcome:
        """Watches chat.db for the outgoing rows of this send until `confirm_s` runs out."""
        deadline = time.monotonic() + self.confirm_s
        seen = []
        while True:
            try:
                seen = await asyncio.to_thread(self.chat_db.outgoing_after, before, mode, target)
            except ChatDBError:
                seen = []
            rows = seen[:count]
            sent = 0
            for row in rows:
                if row.error:
                    detail = f"Messages marked bubble {sent + 1} failed (error {row.error})"
                    return SendOutcome("failed", detail, sent)
                if not row.is_sent:
                    break
                sent += 1
            if sent == count:
                guids = tuple(row.guid for row in rows)
                return SendOutcome("delivered", f"{count} bubble(s) written as sent", count, guids)
            if time.monotonic() >= deadline:
                prefix = f"{note}; " if note else ""
                return SendOutcome(
                    "uncertain",
                    f"{prefix}{sent} of {count} bubble(s) confirmed sent within "
                    f"{self.confirm_s:g} s ({len(rows)} row(s) seen)",
                    sent,
                )
            await asyncio.sleep(self.confirm_poll_s)
