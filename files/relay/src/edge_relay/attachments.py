"""Files a send command carries, staged where Messages may read them.

Messages sends a file only from a place it can reach (the user's ~/Library/Messages or
~/Pictures); a file elsewhere, /tmp included, fails without an error from osascript. So every
attachment is copied (a `path` on this Mac) or written (`data_base64` from the backend) into
`<attachments folder>/<command id>/` before the command is queued, and the folder is removed
once the command is finished. A command whose outcome is uncertain keeps its files a day,
since Messages may still be reading them.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import shutil
from typing import Any, Dict, List

# iMessage refuses files above about 100 MB.
MAX_ATTACHMENT_BYTES = 100 * 1024 * 1024
MAX_ATTACHMENTS = 10
UNCERTAIN_KEEP_S = 24 * 3600
SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._ -]")


class AttachmentError(ValueError):
    """An attachment the relay cannot stage; the message says what was wrong."""


def _safe_name(name: str, fallback: str) -> str:
    """A file name without folders or characters a path could misread."""
    base = SAFE_NAME_RE.sub("_", os.path.basename(name.replace("\\", "/"))).strip(" .")
    return base or fallback


class AttachmentStage:
    def __init__(self, folder: str):
        self.folder = folder

    def _command_folder(self, command_id: str) -> str:
        return os.path.join(self.folder, _safe_name(command_id, "command"))

    def stage(self, command_id: str, attachments: Any) -> List[str]:
        """Copies or writes each attachment; returns the staged paths, in order.

        Nothing is left behind when one of them is refused.
        """
        if not isinstance(attachments, list) or len(attachments) > MAX_ATTACHMENTS:
            raise AttachmentError(f"attachments must be a list of at most {MAX_ATTACHMENTS}")
        target = self._command_folder(command_id)
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(target, mode=0o700)
        try:
            return [
                self._stage_one(target, index, attachment)
                for index, attachment in enumerate(attachments, start=1)
            ]
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def _stage_one(self, target: str, index: int, attachment: Any) -> str:
        where = f"attachment {index}"
        if not isinstance(attachment, dict):
            raise AttachmentError(f"{where} must be an object with a path or data_base64")
        if "path" in attachment and "data_base64" not in attachment:
            return self._copy(target, index, attachment["path"], where)
        if "data_base64" in attachment and "path" not in attachment:
            return self._write(target, index, attachment, where)
        raise AttachmentError(f"{where} must give either a path or data_base64, not both")

    @staticmethod
    def _copy(target: str, index: int, source: Any, where: str) -> str:
        if not isinstance(source, str) or not os.path.isabs(source):
            raise AttachmentError(f"{where}: path must be an absolute path on this Mac")
        try:
            size = os.path.getsize(source)
        except OSError as error:
            raise AttachmentError(f"{where}: {source} cannot be read ({error.strerror})") from None
        if not os.path.isfile(source):
            raise AttachmentError(f"{where}: {source} is not a regular file")
        if size > MAX_ATTACHMENT_BYTES:
            raise AttachmentError(f"{where}: {source} is larger than iMessage accepts (100 MB)")
        staged = os.path.join(target, f"{index}-{_safe_name(source, 'file')}")
        try:
            shutil.copyfile(source, staged)
        except OSError as error:
            raise AttachmentError(
                f"{where}: {source} cannot be copied ({error.strerror})"
            ) from None
        return staged

    @staticmethod
    def _write(target: str, index: int, attachment: Dict[str, Any], where: str) -> str:
        name = attachment.get("filename")
        if not isinstance(name, str) or not name.strip():
            raise AttachmentError(f"{where}: data_base64 needs a filename (e.g. photo.jpg)")
        data = attachment["data_base64"]
        if not isinstance(data, str):
            raise AttachmentError(f"{where}: data_base64 must be a base64 string")
        if len(data) > MAX_ATTACHMENT_BYTES * 4 // 3 + 4:
            raise AttachmentError(f"{where}: larger than iMessage accepts (100 MB)")
        try:
            content = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise AttachmentError(f"{where}: data_base64 is not valid base64") from None
        staged = os.path.join(target, f"{index}-{_safe_name(name, 'file')}")
        with open(staged, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        return staged

    def discard(self, command_id: str) -> None:
        shutil.rmtree(self._command_folder(command_id), ignore_errors=True)

    def prune(self, keep_ids: List[str], now: float) -> None:
        """Removes folders of commands no longer queued, once a day old (uncertain sends)."""
        keep = {self._command_folder(command_id) for command_id in keep_ids}
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                old = now - os.path.getmtime(path) > UNCERTAIN_KEEP_S
            except OSError:
                continue
            if path not in keep and old:
                shutil.rmtree(path, ignore_errors=True)
