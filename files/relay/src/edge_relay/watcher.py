"""Noticing new rows at once: a watch on the Messages folder, not on chat.db itself.

Messages writes new rows to `chat.db-wal` first, may replace that file with a new one (new
inode) and truncates it at a checkpoint; a watch on the file would go deaf the first time.
A watch on the folder keeps seeing the files whatever happens to them. watchdog uses FSEvents
on macOS and inotify on Linux. Every change to `chat.db` or its WAL wakes the reader, which
then reads in a short transaction; the reader's slow poll stays as a safety net for a change
the watch did not report (or a folder that could not be watched).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable, Optional

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("edge_relay.watcher")

# The relay's own reads open and close these files; only changes may wake it, or each read
# would wake the next one.
WAKING_EVENTS = ("modified", "created", "moved", "deleted")
CHECK_EVERY_S = 10.0


class _Handler(FileSystemEventHandler):
    def __init__(self, names: frozenset, wake: Callable[[], None]):
        self.names = names
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in WAKING_EVENTS or event.is_directory:
            return
        paths = (event.src_path, getattr(event, "dest_path", "") or "")
        if any(os.path.basename(os.fsdecode(path)) in self.names for path in paths if path):
            self.wake()


class FolderWatcher:
    """Calls `wake` (from the event loop) whenever chat.db or its WAL changes."""

    def __init__(self, chat_db: str, wake: Callable[[], None]):
        self.folder = os.path.dirname(os.path.abspath(chat_db))
        name = os.path.basename(chat_db)
        self.names = frozenset((name, name + "-wal", name + "-journal"))
        self.wake = wake
        self._observer: Optional[Observer] = None
        self._folder_id: Optional[tuple] = None
        self.problem: Optional[str] = "not started"

    async def run(self) -> None:
        """Keeps the watch up: starts it, and starts it again if the folder is replaced."""
        loop = asyncio.get_running_loop()

        def wake_from_thread() -> None:
            loop.call_soon_threadsafe(self.wake)

        try:
            while True:
                if self._folder_id != self._current_id():
                    self._stop()
                    self._start(wake_from_thread)
                    if self._observer is not None:
                        self.wake()  # changes between the last read and the new watch
                await asyncio.sleep(CHECK_EVERY_S)
        finally:
            self._stop()

    def _current_id(self) -> Optional[tuple]:
        try:
            info = os.stat(self.folder)
        except OSError:
            return None
        return (info.st_dev, info.st_ino)

    def _start(self, wake: Callable[[], None]) -> None:
        folder_id = self._current_id()
        if folder_id is None:
            self._note(f"cannot watch {self.folder}: it does not exist or cannot be read")
            return
        observer = Observer()
        observer.schedule(_Handler(self.names, wake), self.folder, recursive=False)
        try:
            observer.start()
        except OSError as error:
            self._note(f"cannot watch {self.folder} ({error}); reading every poll interval instead")
            return
        self._observer = observer
        self._folder_id = folder_id
        self.problem = None
        log.info("watching %s for changes to chat.db", self.folder)

    def _note(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("%s", problem)
        self.problem = problem
        self._folder_id = None

    def _stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2.0)
            self._observer = None
