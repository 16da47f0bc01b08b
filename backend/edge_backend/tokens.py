"""Shard bearer tokens: how they are made and how the backend stores them.

The collection's persona_shard module makes tokens the same way; the backend
only ever keeps the SHA-256 hex digest, so a database dump reveals no token.
"""

import hashlib
import secrets

TOKEN_PREFIX = "edge_"


def new_token() -> str:
    """A fresh shard token: the prefix and 32 random bytes, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The value stored in persona_shards.token_hash for this token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
