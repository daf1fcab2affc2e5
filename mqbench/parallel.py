"""The parallel map every caller goes through, on joblib's loky processes or a Dask cluster.

Backends (chosen once, with :func:`use_backend`, and read by :func:`map_items` and
:func:`map_unordered`; the default is loky):

* ``loky``: joblib's worker processes on this machine (``jobs`` of them);
* ``dask``: a ``dask.distributed`` cluster, either a local one of ``jobs`` worker processes (one
  thread each, started on the first parallel call and closed when the ``use_backend`` block ends)
  or the running cluster whose scheduler address is given. The dask path uses ``Client.submit`` +
  ``as_completed`` directly rather than joblib's dask backend: each item is one future whose
  result reaches the client exactly once (a task lost with a killed worker is re-run by the
  scheduler, never delivered twice), the shared arguments are scattered to the workers once
  instead of being pickled into every task, and errors keep their type.

``jobs == 1`` runs in the calling process whatever the backend. Results never depend on the
backend or on ``jobs``: items are independent, seeded per item, and computed on one torch thread.

Workers see the caller's data root: joblib's loky executor keeps its worker processes between
calls, and a worker keeps the environment it was started with (a Dask worker, the one of its own
machine). A program (or a test) that changes ``EVOPROXY_DATA`` / ``EVOPROXY_CACHE`` between two
parallel calls would otherwise have workers reading the old data root. Every parallel task is
therefore wrapped in :func:`call_with_env`, which applies the caller's values first and, when they
changed, runs the reset hooks that modules holding such memos registered with
:func:`on_env_change` (explicit hooks, not a lookup of module attributes by name). On a multi-machine
cluster these paths must therefore exist on every worker (a shared file system).
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

from mqbench.errors import ConfigError

ENV_KEYS = ("EVOPROXY_DATA", "EVOPROXY_CACHE")
BACKENDS = ("loky", "dask")
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


# ------------------------------------------------------------------------------------------ backends

@dataclass(eq=False)
class Backend:
    """The engine parallel calls run on (see the module docstring); the dask client starts lazily."""

    name: str = "loky"
    scheduler: str | None = None
    workers: int = 1  # worker processes of the local Dask cluster (no scheduler)
    _client: object = None
    _cluster: object = None

    def client(self):
        """The ``dask.distributed.Client`` (connects to the scheduler, or starts the local cluster, once)."""
        if self._client is None:
            try:
                from dask.distributed import Client, LocalCluster
            except ImportError:
                raise ConfigError("--backend dask needs dask.distributed: pip install 'evoproxy[dask]'") from None
            if self.scheduler:
                try:
                    self._client = Client(self.scheduler, timeout=20, set_as_default=False)
                except (OSError, TimeoutError) as exc:
                    raise ConfigError(f"cannot reach the Dask scheduler at {self.scheduler}: {exc}") from None
            else:
                import logging

                import warnings

                with warnings.catch_warnings():  # the scheduler's HTTP port: another cluster may hold the default
                    warnings.filterwarnings("ignore", message="Port .* is already in use")
                    self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                                 dashboard_address=None, host="127.0.0.1",
                                                 silence_logs=logging.ERROR)
                self._client = Client(self._cluster, set_as_default=False)
        return self._client

    def worker_threads(self, jobs: int) -> int:
        """Torch threads per task: the machine's cores shared by ``jobs`` local workers; 1 on a remote cluster
        (a Dask worker runs one task per thread, so workers started with ``--nthreads 1`` use their cores fully)."""
        return 1 if self.scheduler else max(1, (os.cpu_count() or 1) // max(1, jobs))

    def close(self) -> None:
        for part in (self._client, self._cluster):
            if part is not None:
                part.close()
        self._client = self._cluster = None


_STACK: list[Backend] = [Backend()]


def check_backend(name: str, scheduler: str | None = None) -> None:
    """One-line errors for an unknown backend or a scheduler without the dask backend."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if scheduler and name != "dask":
        raise ConfigError("--scheduler needs --backend dask")


def current_backend() -> Backend:
    return _STACK[-1]


@contextlib.contextmanager
def use_backend(name: str = "loky", scheduler: str | None = None, *, jobs: int = 1) -> Iterator[Backend]:
    """Run the parallel calls of the block on ``name`` (``loky`` or ``dask``); with ``dask`` and no
    ``scheduler`` a local cluster of ``jobs`` worker processes is started on first use and closed at the
    end. A nested block with the same settings reuses the enclosing backend (and its cluster)."""
    check_backend(name, scheduler)
    cur = current_backend()
    if (cur.name, cur.scheduler) == (name, scheduler or None) and (name == "loky" or scheduler or cur.workers >= jobs):
        yield cur
        return
    backend = Backend(name, scheduler or None, max(1, int(jobs)))
    _STACK.append(backend)
    try:
        yield backend
    finally:
        _STACK.remove(backend)
        backend.close()


# ------------------------------------------------------------------------------------------ maps

def _call_shared(env: dict, fn, shared: tuple, item):
    before, after = shared
    return call_with_env(env, fn, *before, item, *after)


@contextlib.contextmanager
def _keep_random_state():
    """Hide the client's use of Python's global ``random`` from the caller. The client's event-loop thread
    draws from it (``random.choice`` of a worker to gather from, connection back-off jitter), which shifted
    a search's random stream (it re-seeds ``random`` per generation and draws between parallel calls)."""
    import random

    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


def _dask_completed(client, futures: list) -> Iterator:
    """The futures' (index, result) as they complete; the rest are cancelled when the caller stops early or fails."""
    from dask.distributed import as_completed

    where = {f.key: i for i, f in enumerate(futures)}
    try:
        for fut in as_completed(futures, loop=client.loop):
            yield where[fut.key], fut.result()
    finally:
        client.cancel(futures)


def map_items(fn, items, before: tuple = (), after: tuple = (), *, jobs: int = 1, progress: bool = True,
              desc: str = "", unit: str = "item") -> list:
    """``[fn(*before, item, *after) for item in items]`` in order; when ``jobs`` > 1 in worker processes of the
    current backend (each task sees the caller's data root, see :func:`call_with_env`), with a tqdm bar on stderr."""
    from tqdm import tqdm

    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, file=sys.stderr, disable=not progress, dynamic_ncols=True)
    out = []
    try:
        if jobs == 1 or len(items) <= 1:
            for item in items:
                out.append(fn(*before, item, *after))
                bar.update(1)
        elif current_backend().name == "dask":
            with _keep_random_state():
                client = current_backend().client()
                env = snapshot_env()
                [shared] = client.scatter([(tuple(before), tuple(after))], broadcast=True, hash=False)
                futures = [client.submit(_call_shared, env, fn, shared, item, pure=False) for item in items]
                out = [None] * len(items)
                try:
                    for i, res in _dask_completed(client, futures):
                        out[i] = res
                        bar.update(1)
                finally:
                    client.cancel([shared])
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


def map_unordered(fn, arg_tuples, *, jobs: int = 1) -> Iterator:
    """``fn(*args)`` for every tuple, yielded as they finish (any order), on the current backend when
    ``jobs`` > 1. Each result is yielded once, also when the backend re-ran a task lost with a worker."""
    arg_tuples = list(arg_tuples)
    if jobs == 1 or not arg_tuples:
        for args in arg_tuples:
            yield fn(*args)
        return
    env = snapshot_env()
    if current_backend().name == "dask":
        import random

        state = random.getstate()  # as in map_items, between the caller's steps (see _keep_random_state)
        client = current_backend().client()
        futures = [client.submit(call_with_env, env, fn, *args, pure=False) for args in arg_tuples]
        for _, res in _dask_completed(client, futures):
            random.setstate(state)
            yield res
            state = random.getstate()
        random.setstate(state)
        return
    from joblib import Parallel, delayed

    runner = Parallel(n_jobs=min(jobs, len(arg_tuples)), backend="loky", return_as="generator_unordered")
    yield from runner(delayed(call_with_env)(env, fn, *args) for args in arg_tuples)
