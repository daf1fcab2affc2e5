"""evoproxy: discover training-free proxies by evolution (see README.md and :mod:`evoproxy.api`).

    import evoproxy
    result = evoproxy.search("nb201-cifar10", samples=100, time_budget=600)
    evaluation = evoproxy.evaluate("nb201-cifar10", ["synflow", result.best], samples=200)

The API names are loaded on first use, so ``import evoproxy`` (and the CLI's start) stays light.
"""
from evoproxy.errors import ConfigError, DataError, EvoproxyError  # noqa: F401

__version__ = "0.1.0"
_API = {"search": "evoproxy.api", "evaluate": "evoproxy.api", "allocate": "evoproxy.api", "export_proxy": "evoproxy.api",
        "load_proxy": "evoproxy.api", "SearchResult": "evoproxy.results", "Evaluation": "evoproxy.results",
        "SearchConfig": "evoproxy.evolution.searchconfig", "Proxy": "evoproxy.language.tree",
        "ProxySearch": "evoproxy.estimator", "Benchmark": "evoproxy.ownbench"}
__all__ = [*_API, "EvoproxyError", "DataError", "ConfigError"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'evoproxy' has no attribute {name!r}")
