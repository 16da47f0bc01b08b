"""Reference backend of the archety.edge relay contract."""

__version__ = "0.1.0"
