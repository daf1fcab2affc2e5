"""evoproxy: discover training-free proxies by evolving expression trees over per-layer statistics."""

__version__ = "0.1.0"

from evoproxy.errors import ConfigError, DataError, EvoproxyError  # noqa: E402,F401
