"""Noticing new rows at once: a watch on the Messages folder, not on chat.db itself.

Messages writes new rows to `chat.db-wal` first, may replace that file with a new one (new
inode) and truncates it at a checkpoint; a watch on the file would go deaf the first time.
A watch on the folder keeps seeing the files whatever happens to them. watchdog uses FSEvents
on macOS and inotify on Linux. A change to `chat.db`, its WAL or its rollback journal wakes the
reader, which then reads in a short transaction; the reader's slow poll stays as a safety net
for a change the watch did not report (or a folder that could not be watched).

A change means a file that is now another file (created, replaced, moved or removed: another
inode or device, or gone) or whose size or modification time moved. Everything else the watch
reports about these files is not new data: being opened and closed, and a change of owner or
mode, which SQLite makes whenever a connection running as root opens the WAL, and which
watchdog before release 7 reports as a modification, as FSEvents does on macOS. Waking on those
would let any connection, the relay's own or the health check's, wake the next read. A write
that leaves size and time as they were (the WAL rewritten in place within one tick of the
clock) follows another write that did wake the reader, and the reader reads again shortly
after each wake, so it is read too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable, Dict, Optional, Tuple

from watchdog.events import (
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

log = logging.getLogger("edge_relay.watcher")

# Opening and closing a file is not a change to it; the handler compares the rest to the file.
WAKING_EVENTS = ("modified", "created", "moved", "deleted")
# Asked of the watch itself, so that inotify does not even report the opens and closes of
# every connection to chat.db (each one a wake-up of the watch's thread).
WATCHED_EVENTS = [FileModifiedEvent, FileCreatedEvent, FileMovedEvent, FileDeletedEvent]
CHECK_EVERY_S = 10.0

# What a change alters: (device, inode, size, modification time in ns), None when gone.
FileState = Optional[Tuple[int, int, int, int]]


def file_state(path: str) -> FileState:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class _Handler(FileSystemEventHandler):
    """Wakes the reader when an event finds one of `names` changed since it last looked."""

    def __init__(self, folder: str, names: frozenset, wake: Callable[[], None]):
        self.folder = folder
        self.names = names
        self.wake = wake
        self.states: Dict[str, FileState] = {
            name: file_state(os.path.join(folder, name)) for name in names
        }

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in WAKING_EVENTS or event.is_directory:
            return
        paths = (event.src_path, getattr(event, "dest_path", "") or "")
        changed = False
        for path in paths:
            name = os.path.basename(os.fsdecode(path)) if path else ""
            if name not in self.names:
                continue
            state = file_state(os.path.join(self.folder, name))
            if state != self.states[name]:
                self.states[name] = state
                changed = True
        if changed:
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
        handler = _Handler(self.folder, self.names, wake)
        observer.schedule(handler, self.folder, recursive=False, event_filter=WATCHED_EVENTS)
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
