"""The user-facing errors, re-exported from the lowest floor (:mod:`mqbench.errors`) where they live."""
from mqbench.errors import ConfigError, DataError, EvoproxyError

__all__ = ["EvoproxyError", "DataError", "ConfigError"]
