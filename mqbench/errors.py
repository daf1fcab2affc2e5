"""User-facing errors: each carries one line that says what is wrong and where.

The CLI prints ``error: <message>`` for these and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class EvoproxyError(Exception):
    """Base class for errors whose message is meant for the user, on one line."""


class DataError(EvoproxyError):
    """A dataset, table or checkpoint is missing, unreadable or corrupt."""


class ConfigError(EvoproxyError, ValueError):
    """A user-supplied value (architecture string, bit configuration, option) is invalid."""
