"""Fixtures of the relay's tests; they live in relay_support so test files can import helpers."""

from relay_support import (  # noqa: F401
    backend,
    corpus,
    messages,
    osascript,
    schema_sql,
    settings,
)
