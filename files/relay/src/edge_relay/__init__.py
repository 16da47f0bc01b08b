"""edge-relay: bridges one shard's Messages account to the chat backend."""

__version__ = "0.1.0"
