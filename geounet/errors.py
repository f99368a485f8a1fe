"""Errors raised by geounet.

Every error a user can cause is a :class:`GeoUNetError`. Each subclass also inherits the
matching builtin, so ``except ValueError`` keeps working for callers who do not know geounet.
Messages name the offending value and say what to do next; the CLI prints them as one line.
"""

from __future__ import annotations


class GeoUNetError(Exception):
    """Root of all geounet errors."""


class InputError(GeoUNetError, ValueError):
    """An input raster or label file cannot be used as given."""


class ModelError(GeoUNetError, ValueError):
    """A checkpoint is unreadable, unsafe or does not fit the input."""


class OutputError(GeoUNetError, OSError):
    """An output cannot be written where asked (exists, not writable, equals the input)."""


class ConfigError(GeoUNetError, ValueError):
    """A setting is out of range or inconsistent with another."""
