"""Bodies Messages archives: `attributedBody` and the edit history in `message_summary_info`.

`attributedBody` is an NSAttributedString archived as a typedstream; its first archived value
is the NSString holding the whole text (attachments appear in it as U+FFFC). When `text` is
NULL the body is the only copy of the text. `message_summary_info` is a binary property list
whose edit history holds one such archived body per version of each part.
"""

from __future__ import annotations

import plistlib
from typing import Any, Dict, List, Optional, Tuple

import typedstream
from typedstream.archiving import GenericArchivedObject, TypedValue


class BodyError(ValueError):
    """The blob is not an archived attributed string the relay understands."""


def _string_of(value: Any) -> Optional[str]:
    text = getattr(value, "value", None)
    return text if isinstance(text, str) else None


def decode_attributed_body(blob: bytes) -> str:
    """The plain text of an `attributedBody` blob; raises BodyError when it has none."""
    try:
        archived = typedstream.unarchive_from_data(bytes(blob))
    except Exception as error:  # the decoder raises many kinds on damaged input
        raise BodyError(f"not a typedstream archive ({type(error).__name__})") from None

    # NSAttributedString keeps its string first; a mutable one may nest it in its superclass.
    current = archived
    while isinstance(current, GenericArchivedObject):
        for item in current.contents:
            if isinstance(item, TypedValue):
                text = _string_of(item.value)
                if text is not None:
                    return text
        current = current.super_object
    raise BodyError("the archive holds no string")


class SummaryInfo:
    """What `message_summary_info` says about edits and unsends of one message.

    `edits` maps a part index to its history, oldest first, as (text, seconds since 2001);
    the last entry is what the part says now. `retracted` lists the parts that were unsent.
    """

    def __init__(self, edits: Dict[int, List[Tuple[Optional[str], Optional[float]]]], retracted):
        self.edits = edits
        self.retracted: List[int] = sorted(retracted)


def _part_index(key: Any) -> Optional[int]:
    try:
        return int(key)
    except (TypeError, ValueError):
        return None


def decode_summary_info(blob: bytes) -> SummaryInfo:
    """Edits and unsends recorded in a `message_summary_info` property list.

    Key `ec` maps each part (as text) to a list of entries, `t` the body as it was (a
    typedstream like `attributedBody`) and `d` when it was written; key `rp` lists retracted
    parts. A history entry whose body cannot be decoded keeps its place with text None, so the
    count of edits stays right. Raises BodyError when the blob is not a property list.
    """
    try:
        info = plistlib.loads(bytes(blob))
    except Exception as error:  # plistlib raises several kinds on damaged input
        raise BodyError(f"not a property list ({type(error).__name__})") from None
    if not isinstance(info, dict):
        raise BodyError("the property list is not a dictionary")

    edits: Dict[int, List[Tuple[Optional[str], Optional[float]]]] = {}
    history_by_part = info.get("ec")
    if isinstance(history_by_part, dict):
        for key, entries in history_by_part.items():
            part = _part_index(key)
            if part is None or not isinstance(entries, list):
                continue
            history = []
            for entry in entries:
                if not isinstance(entry, dict):
                    continue
                text = None
                if isinstance(entry.get("t"), bytes):
                    try:
                        text = decode_attributed_body(entry["t"])
                    except BodyError:
                        text = None
                moment = entry.get("d")
                history.append((text, float(moment) if isinstance(moment, (int, float)) else None))
            edits[part] = history

    retracted = info.get("rp")
    parts = [p for p in (_part_index(v) for v in retracted or []) if p is not None]
    return SummaryInfo(edits, parts if isinstance(retracted, list) else [])
