"""Text of a message whose `text` column is NULL: the string archived in `attributedBody`.

`attributedBody` is an NSAttributedString archived as a typedstream; its first archived value
is the NSString holding the whole text (attachments appear in it as U+FFFC).
"""

from __future__ import annotations

from typing import Any, Optional

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
