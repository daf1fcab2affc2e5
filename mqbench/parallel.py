"""Worker calls that see the caller's data root and cache.

joblib's loky executor keeps its worker processes between calls, and a worker keeps the environment
it was started with. A program (or a test) that changes ``EVOPROXY_DATA`` / ``EVOPROXY_CACHE``
between two parallel calls would otherwise have workers reading the old data root. Every parallel
task is therefore wrapped in :func:`call_with_env`, which applies the caller's values first and,
when they changed, runs the reset hooks that modules holding such memos registered with
:func:`on_env_change` (explicit hooks, not a lookup of module attributes by name).
"""
from __future__ import annotations

import os
import sys
from typing import Callable

ENV_KEYS = ("EVOPROXY_DATA", "EVOPROXY_CACHE")
_RESET_HOOKS: list[Callable[[], None]] = []


def on_env_change(hook: Callable[[], None]) -> Callable[[], None]:
    """Register ``hook()`` to clear a per-process memo that depends on the data root or cache (usable as a decorator)."""
    if hook not in _RESET_HOOKS:
        _RESET_HOOKS.append(hook)
    return hook


def reset_memos() -> None:
    """Run every registered reset hook (e.g. after a test changed the data root)."""
    for hook in _RESET_HOOKS:
        hook()


def snapshot_env() -> dict:
    return {k: os.environ.get(k) for k in ENV_KEYS}


def call_with_env(env: dict, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with ``env`` (from :func:`snapshot_env`) applied to this process."""
    changed = False
    for key, value in env.items():
        if os.environ.get(key) != value:
            changed = True
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if changed:
        reset_memos()
    return fn(*args, **kwargs)


def map_items(fn, items, before: tuple = (), after: tuple = (), *, jobs: int = 1, progress: bool = True,
              desc: str = "", unit: str = "item") -> list:
    """``[fn(*before, item, *after) for item in items]`` in order, in joblib (loky) processes when ``jobs`` > 1
    (each task sees the caller's data root, see :func:`call_with_env`), with a tqdm bar on stderr."""
    from tqdm import tqdm

    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, file=sys.stderr, disable=not progress, dynamic_ncols=True)
    out = []
    try:
        if jobs == 1 or len(items) <= 1:
            for item in items:
                out.append(fn(*before, item, *after))
                bar.update(1)
        else:
            from joblib import Parallel, delayed

            env = snapshot_env()
            runner = Parallel(n_jobs=min(jobs, len(items)), backend="loky", return_as="generator")
            for res in runner(delayed(call_with_env)(env, fn, *before, item, *after) for item in items):
                out.append(res)
                bar.update(1)
    finally:
        bar.close()
    return out
