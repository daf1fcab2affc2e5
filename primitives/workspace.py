"""A process's working set for one benchmark: the benchmark resolved once, its batches, its statistics.

    ref, bench = BenchRef.resolve("nb201-cifar10")
    ws = Workspace(ref, bench)                          # or Workspace(ref): resolves the benchmark
    inputs, targets = ws.batch(64)                      # the protocol's batch (primitives.items.batch_for)
    stats = ws.statistics(ids, request, jobs=2)         # one NetworkStats per id, in order
    one = ws.item_statistics(ids[0], request)           # the same for one item (a worker's view)
    map_items(fn, ids, setup=ws.setup())                # fn(workspace, item): each worker builds its own once

A workspace is built once per process and passed explicitly to what needs the benchmark, its batch or
its items' statistics (scoring items, the search samples, calibration); worker processes build theirs
from :meth:`setup` (:class:`mqbench.parallel.Setup`), once each. It replaces the per-module memos that
re-resolved the benchmark, the batch and the network statistics at every layer. What it keeps:

* ``bench``: the resolved :class:`mqbench.benchmarks.Benchmark` (an MQ benchmark's FP network is loaded
  once, by the benchmark, on first use);
* the protocol's batch per batch size (:func:`primitives.items.batch_for`);
* the statistics of the last ``NETWORK_MEMO_SIZE`` networks asked for one or two at a time (the
  configurations of an MQ table share one network: scoring them item by item reads it once); larger
  requests read the disk cache (:mod:`primitives.many`), which holds every network's statistics;
* ``values``: a bounded LRU store other layers keep per-network values in, with their own keys
  (:meth:`evoproxy.baselines.ProxyContext.network_cached`: Hessian traces shared by the configurations
  of one network).

Protocol (:mod:`primitives.items`): the statistics of a *network* (every primitive but the quantization
ones) are extracted once per network key and cached on disk under ``cache_root()/primitives``; the
quantization primitives of an item's bit configuration are added with the benchmark's quantizer.
"""
from __future__ import annotations

import functools
from collections import OrderedDict

from mqbench.parallel import Setup
from primitives.core import NetworkStats
from primitives.items import BATCH_SEED, StatsRequest, batch_for, check_request, split_names, with_bit_config

NETWORK_MEMO_SIZE = 2  # networks whose statistics a workspace keeps in memory
VALUES_SIZE = 256  # entries of the per-network values store


class Workspace:
    """The benchmark of ``ref`` (resolved once, or ``bench`` when the caller already holds it), its batches
    and its statistics store (see the module docstring)."""

    def __init__(self, ref, bench=None):
        if bench is None:
            from mqbench.benchmarks import load_bench

            bench = load_bench(ref)
        self.ref = ref
        self.bench = bench
        self._batches: dict = {}
        self._networks: "OrderedDict[tuple, NetworkStats]" = OrderedDict()
        self.values: "OrderedDict[tuple, object]" = OrderedDict()

    def setup(self) -> Setup:
        """How a worker process builds its own workspace for this benchmark (this one in this process)."""
        return Setup(Workspace, (self.ref,), local=self)

    def batch(self, size: int):
        """(inputs, targets) of the protocol's batch of ``size`` images for this benchmark (read once)."""
        size = int(size)
        if size not in self._batches:
            self._batches[size] = batch_for(self.bench, size)
        return self._batches[size]

    def remember(self, key: tuple, value) -> None:
        """Keep ``value`` under ``key`` in :attr:`values` (the least recently used past ``VALUES_SIZE`` go)."""
        self.values[key] = value
        self.values.move_to_end(key)
        while len(self.values) > VALUES_SIZE:
            self.values.popitem(last=False)

    def recall(self, key: tuple):
        """The value kept under ``key`` (marked recently used), or None."""
        if key not in self.values:
            return None
        self.values.move_to_end(key)
        return self.values[key]

    # ------------------------------------------------------------------ statistics
    def statistics(self, ids, request: StatsRequest, *, jobs: int = 1, progress: bool = True,
                   cache_dir=None) -> list[NetworkStats]:
        """One ``NetworkStats`` per id of this benchmark, in order (network statistics from the store, the disk
        cache under ``cache_dir`` — default ``cache_root()/primitives`` — or extraction in ``jobs`` processes)."""
        bench = self.bench
        check_request(bench, request)
        ids = list(ids)
        reps: dict = {}
        for item in ids:
            reps.setdefault(bench.network_key(item), item)
        networks = self._networks_of(reps, request, jobs, progress, cache_dir)
        _, quant = split_names(request.names)
        quantized: dict = {}
        return [with_bit_config(networks[bench.network_key(i)], bench.bit_config(i), quant, bench.quantizer, quantized)
                for i in ids]

    def item_statistics(self, item, request: StatsRequest, cache_dir=None) -> NetworkStats:
        """:meth:`statistics` of one item, in this process (no progress bar)."""
        return self.statistics([item], request, progress=False, cache_dir=cache_dir)[0]

    def _networks_of(self, reps: dict, request: StatsRequest, jobs: int, progress: bool, cache_dir) -> dict:
        """{network_key: NetworkStats without quantization primitives}, from the store, the disk cache or extraction."""
        from primitives.many import extract_many

        out, todo = {}, []
        for key in reps:
            if (key, request) in self._networks:
                self._networks.move_to_end((key, request))
                out[key] = self._networks[(key, request)]
            else:
                todo.append(key)
        if todo:
            inputs, targets = self.batch(request.batch)
            if cache_dir is None:
                from mqbench.dataroot import cache_root

                cache_dir = cache_root() / "primitives"
            found = extract_many(todo, functools.partial(build_network, self.setup(), reps),
                                 (inputs, targets, BATCH_SEED), jobs=jobs, cache_dir=cache_dir, progress=progress,
                                 **request.network_kwargs())
            for key, st in zip(todo, found):
                out[key] = st
                if len(todo) <= NETWORK_MEMO_SIZE:
                    self._networks[(key, request)] = st
                    while len(self._networks) > NETWORK_MEMO_SIZE:
                        self._networks.popitem(last=False)
        return out


def build_network(setup: Setup, reps: dict, network_key):
    """(network, its key) for :func:`primitives.many.extract_many`: the network of ``network_key``'s
    representative item, built by the workspace of ``setup`` in the process that extracts it."""
    return setup.state().bench.network(reps[network_key]), network_key
