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
changed, empties the process's state slot (below). On a multi-machine cluster these paths must
therefore exist on every worker (a shared file system).

**Per-process state.** What every task of a call shares (a benchmark resolved once, its batch and
statistics: :class:`primitives.workspace.Workspace`, or the search samples built from it) is named by a
:class:`Setup`, ``build(*args)``. ``map_items(..., setup=s)`` calls ``fn(state, *before, item, *after)``
with ``state = s.state()``: in the calling process the object the caller already built (``Setup(...,
local=obj)``; it is never pickled), in a worker the one built there by the first task that needed it and
kept in the process's one state slot (:func:`process_state`) for the next tasks. The slot is this
project's only per-process store of such objects: it holds the latest setup's state and is emptied
when the environment changes.
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
LEAK_MARGIN = 300 * 10**6  # loky's own margin (process_executor._MAX_MEMORY_LEAK_SIZE), kept above a state
_SLOT: dict = {}  # the per-process state slot: {Setup: its state}, the latest setup only (module docstring)


class Setup:
    """How a process builds the state the tasks of a parallel call share: ``build(*args)`` (a top-level
    function and picklable, hashable arguments). ``local``: that state, already built by the caller, used in
    the calling process and never pickled (a worker builds its own, once)."""

    __slots__ = ("build", "args", "local")

    def __init__(self, build: Callable, args: tuple = (), local=None):
        self.build, self.args, self.local = build, tuple(args), local

    def __eq__(self, other) -> bool:
        return isinstance(other, Setup) and (self.build, self.args) == (other.build, other.args)

    def __hash__(self) -> int:
        return hash((self.build, self.args))

    def __reduce__(self):
        return Setup, (self.build, self.args)  # the caller's own state stays home

    def __repr__(self) -> str:
        return f"Setup({getattr(self.build, '__qualname__', self.build)}, {self.args!r})"

    def state(self):
        """The caller's ``local`` state, or this process's (see :func:`process_state`)."""
        return self.local if self.local is not None else process_state(self)


def process_state(setup: Setup):
    """The state of ``setup`` in this process: built on first use and kept in the slot until another setup
    needs it or the environment changes."""
    if setup not in _SLOT:
        _SLOT.clear()  # one state per process keeps memory bounded
        _SLOT[setup] = setup.build(*setup.args)
        _allow_for_state(_resident_bytes())
    return _SLOT[setup]


def _resident_bytes() -> int:
    """This process's resident memory (0 without psutil, when loky's leak guard is off anyway)."""
    try:
        import psutil
    except ImportError:
        return 0
    return psutil.Process().memory_info().rss


def _allow_for_state(resident: int) -> None:
    """Tell loky's leak guard that a state was built. A loky worker whose memory grows by more than
    ``_MAX_MEMORY_LEAK_SIZE`` (300 MB) beyond what it held after its first task is stopped and replaced; a
    worker that builds a state after its first task (the search samples' statistics: 2.2 GB per worker for
    150 NAS-Bench-201 networks) was replaced at once, and its successor read them all again (measured: both
    workers replaced 66 s into a search). The guard's margin now counts from ``resident``, the memory the
    process holds with its state built, so that growth beyond it still counts as a leak; in the calling
    process (no loky worker loop reads the setting) this changes nothing."""
    try:
        from joblib.externals.loky import process_executor
    except ImportError:
        return
    if resident > 0 and hasattr(process_executor, "_MAX_MEMORY_LEAK_SIZE"):
        process_executor._MAX_MEMORY_LEAK_SIZE = max(process_executor._MAX_MEMORY_LEAK_SIZE, LEAK_MARGIN + resident)


def clear_state() -> None:
    """Empty this process's state slot (done by :func:`call_with_env` when the data root or cache changed)."""
    _SLOT.clear()


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
        clear_state()
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

def _task(setup: Setup | None, fn, before: tuple, item, after: tuple):
    """One item's call: ``fn(*before, item, *after)``, with the setup's state first when there is one."""
    if setup is None:
        return fn(*before, item, *after)
    return fn(setup.state(), *before, item, *after)


def _call_shared(env: dict, fn, shared: tuple, item):
    setup, before, after = shared
    return call_with_env(env, _task, setup, fn, before, item, after)


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
              desc: str = "", unit: str = "item", setup: Setup | None = None) -> list:
    """``[fn(*before, item, *after) for item in items]`` in order; when ``jobs`` > 1 in worker processes of the
    current backend (each task sees the caller's data root, see :func:`call_with_env`), with a tqdm bar on stderr.
    With ``setup``, ``fn(state, *before, item, *after)``: the state of the setup in the process that runs the
    item (the caller's ``local`` one with ``jobs`` = 1, see :class:`Setup`)."""
    from tqdm import tqdm

    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, file=sys.stderr, disable=not progress, dynamic_ncols=True)
    out = []
    try:
        if jobs == 1 or len(items) <= 1:
            for item in items:
                out.append(_task(setup, fn, tuple(before), item, tuple(after)))
                bar.update(1)
        elif current_backend().name == "dask":
            with _keep_random_state():
                client = current_backend().client()
                env = snapshot_env()
                [shared] = client.scatter([(setup, tuple(before), tuple(after))], broadcast=True, hash=False)
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
            for res in runner(delayed(call_with_env)(env, _task, setup, fn, tuple(before), item, tuple(after))
                              for item in items):
                out.append(res)
                bar.update(1)
    finally:
        bar.close()
    return out


def _unordered_task(setup: Setup | None, fn, args: tuple):
    return fn(*args) if setup is None else fn(setup.state(), *args)


def map_unordered(fn, arg_tuples, *, jobs: int = 1, setup: Setup | None = None) -> Iterator:
    """``fn(*args)`` for every tuple, yielded as they finish (any order), on the current backend when
    ``jobs`` > 1. Each result is yielded once, also when the backend re-ran a task lost with a worker.
    With ``setup``, ``fn(state, *args)`` as in :func:`map_items`."""
    arg_tuples = [tuple(args) for args in arg_tuples]
    if jobs == 1 or not arg_tuples:
        for args in arg_tuples:
            yield _unordered_task(setup, fn, args)
        return
    env = snapshot_env()
    if current_backend().name == "dask":
        import random

        state = random.getstate()  # as in map_items, between the caller's steps (see _keep_random_state)
        client = current_backend().client()
        futures = [client.submit(call_with_env, env, _unordered_task, setup, fn, args, pure=False) for args in arg_tuples]
        for _, res in _dask_completed(client, futures):
            random.setstate(state)
            yield res
            state = random.getstate()
        random.setstate(state)
        return
    from joblib import Parallel, delayed

    runner = Parallel(n_jobs=min(jobs, len(arg_tuples)), backend="loky", return_as="generator_unordered")
    yield from runner(delayed(call_with_env)(env, _unordered_task, setup, fn, args) for args in arg_tuples)
