"""stratacache: a multi-level cache for Python."""

__version__ = "0.1.0"
