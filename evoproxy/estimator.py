"""``ProxySearch``: fit a proxy to networks and accuracies you hold, in the manner of scikit-learn / PySR.

    est = evoproxy.ProxySearch(time_budget=300, seed=0, population=16, generations=10)
    est.fit(models, accuracies, inputs=x, targets=y)              # or (factory, descriptions, accuracies)
    est.fit(model, bit_configs, accuracies, inputs=x, targets=y)  # mixed precision: one model, bits per layer
    est.best_, est.hall_of_fame_, est.equations_, est.holdout_    # learned attributes end in _
    est.predict(new_models); est.rank(new_models); est.export("proxy.py"); est.plot()
    est.score_holdout(["synflow", "zico", "params"])              # an Evaluation on the held-out items

A thin layer over the CLI's search (:func:`evoproxy.evolution.run_search`), not a second engine:
``fit`` writes the items as an ordinary benchmark spec into the run folder (``<out>/benchmark/search.toml``
and ``holdout.toml``, :mod:`evoproxy.ownbench`), extracts the statistics of the search items one network
at a time into the statistics cache, then runs the search on that spec. Every
:class:`~evoproxy.searchconfig.SearchConfig` setting is a keyword (islands, jobs, backend, device,
screening, ...); ``out`` and ``resume=True`` continue a run folder. ``holdout`` (default 0.2) of the items,
drawn with ``seed``, are never searched on; the best proxy's correlation on them is ``holdout_``.

Reproducible: two fits with the same items and settings give the same run when ``population`` and
``generations`` are given (``time_budget`` then only stops a run early); with them unset they are sized
from a measured scoring rate (:mod:`evoproxy.budget`), which depends on the machine.
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

from mqbench.errors import ConfigError

FIXED = {"bench": "the items given to fit", "table": "the items given to fit", "gt_column": "the accuracies given to fit",
         "checkpoint": "the model given to fit", "batch": "the inputs given to fit"}


class Equations:
    """The hall of fame as a table: rank, formula, fitness, generation, size (``to_pandas()`` with pandas)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __iter__(self):
        return iter(self.rows)

    def to_pandas(self):
        try:
            import pandas as pd
        except ImportError:
            raise ConfigError("to_pandas needs pandas (pip install pandas); .rows holds the same table") from None
        return pd.DataFrame(self.rows)

    def __repr__(self) -> str:
        lines = [f"{'rank':>4}  {'fitness':>8}  {'size':>4}  formula"]
        lines += [f"{r['rank']:>4}  {r['fitness']:>8.4f}  {r['size']:>4}  {r['formula']}" for r in self.rows]
        return "\n".join(lines)


class ProxySearch:
    """Evolve a proxy on items you hold (see the module docstring).

    ``time_budget``: seconds for the search (None: none); ``seed``: the holdout draw, the search's sample order
    and its evolution; ``holdout``: fraction of the items kept out of the search and reported after it;
    ``out``: the run folder (default: a new temporary folder); ``resume``: continue the run in ``out``;
    ``settings``: any other :class:`~evoproxy.searchconfig.SearchConfig` field (population, generations,
    fitness, structure, islands, jobs, backend, scheduler, device, samples, ...). Checked here: a wrong
    setting is a one-line :class:`~evoproxy.errors.ConfigError`.
    """

    def __init__(self, time_budget: float | None = 300, seed: int = 0, *, holdout: float = 0.2,
                 out: str | Path | None = None, resume: bool = False, **settings):
        self.time_budget, self.seed, self.holdout, self.out, self.resume = time_budget, seed, holdout, out, resume
        self.settings = dict(settings)
        self._config("pending", "pending").validate()
        if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
            raise ConfigError(f"holdout must be a fraction in [0, 1), got {holdout!r}")

    def _config(self, bench: str, out: str, **more):
        from evoproxy.searchconfig import RETIRED_KEYS, SearchConfig

        fixed = [k for k in self.settings if k in FIXED]
        if fixed:
            raise ConfigError(f"setting {fixed[0]!r} is set by fit ({FIXED[fixed[0]]})")
        known = {f.name for f in dataclasses.fields(SearchConfig)}
        unknown = [k for k in self.settings if k not in known and k not in RETIRED_KEYS]  # retired: accepted, ignored
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r}; known: {', '.join(sorted(known - set(FIXED)))}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        return SearchConfig(**{"samples": 4, **self.settings, **more, "bench": bench, "out": out, "seed": self.seed,
                               "time_budget": self.time_budget})

    def get_params(self, deep: bool = True) -> dict:
        return {"time_budget": self.time_budget, "seed": self.seed, "holdout": self.holdout, "out": self.out,
                "resume": self.resume, **self.settings}

    def set_params(self, **params) -> "ProxySearch":
        merged = {**self.get_params(), **params}
        self.__init__(**merged)
        return self

    # ------------------------------------------------------------------ fit
    def fit(self, *args, inputs=None, targets=None, **options) -> "ProxySearch":
        """``fit(models, accuracies)``, ``fit(factory, descriptions, accuracies)`` or ``fit(model, bit_configs,
        accuracies)`` on the batch ``inputs``/``targets`` (``options``: see
        :meth:`evoproxy.ownbench.Benchmark.from_models`), or ``fit(benchmark)``. Returns the estimator."""
        from evoproxy.evolution import run_search
        from evoproxy.ownbench import Benchmark

        if len(args) == 1 and isinstance(args[0], Benchmark):
            bench = args[0]
        elif not args:
            raise ConfigError("fit needs the items: fit(models, accuracies, inputs=..., targets=...)")
        else:
            bench = Benchmark.from_models(*args, inputs=inputs, targets=targets, **options)
        progress = self.settings.get("progress", True)
        out = Path(self.out) if self.out is not None else Path(tempfile.mkdtemp(prefix="evoproxy-fit-"))
        if (out / "checkpoint.json").exists() and not self.resume:
            raise ConfigError(f"{out} already holds a search; pass resume=True to continue it or choose another out")
        train, hold = self._split(len(bench))
        failed = bench.check(range(len(bench)), progress=progress)  # mq: the one model (an error if it fails)
        train = [i for i in train if i not in failed]
        hold = [i for i in hold if i not in failed]
        if len(train) < 4:
            i, why = next(iter(failed.items()))
            raise ConfigError(f"{len(failed)} of {len(bench)} items fail on the batch, {len(train)} left to search "
                              f"on (need >= 4); item {i}: {why}")
        failed.update(self._warm(bench, out, train, hold))
        self._report(failed)
        train = [i for i in train if i not in failed]
        config = self._config(str(out / "benchmark" / "search.toml"), str(out), **self._sizes(train, bench))
        self.benchmark_, self.failed_, self.train_indices_, self.holdout_indices_ = bench, failed, train, hold
        self.result_ = run_search(config, resume=self.resume)
        self.best_ = self.result_.best
        self.hall_of_fame_ = list(self.result_.hall_of_fame) or [self.best_]
        self.equations_ = Equations(self.result_.equations())
        self.holdout_ = None
        if hold:
            report = self.score_holdout([self.best_]).reports
            self.holdout_ = dict(next(iter(report.values())), n=len(hold))
        return self

    def _sizes(self, train, bench) -> dict:
        return {"samples": self.settings.get("samples", len(train)), "batch": len(bench.targets)}

    def _split(self, n: int) -> tuple[list[int], list[int]]:
        n_hold = int(round(self.holdout * n))
        if self.holdout > 0 and n_hold == 0 and n >= 5:
            n_hold = 1
        order = np.random.default_rng(self.seed).permutation(n)
        hold = sorted(int(i) for i in order[:n_hold])
        train = sorted(int(i) for i in order[n_hold:])
        if len(train) < 4:
            raise ConfigError(f"{len(train)} items left to search on after the holdout of {n_hold}; need >= 4")
        return train, hold

    def _write(self, bench, folder: Path, train, hold) -> None:
        bench.write(folder, "search", train)
        if hold:
            bench.write(folder, "holdout", hold)

    def _warm(self, bench, out: Path, train, hold) -> dict:
        """Write the specs and extract the search items' statistics one network at a time (disk cache, in this
        process), as the search will ask for them, so that the search (and its workers, which cannot reach
        the live networks) only read them. An item whose extraction fails is reported and left out."""
        from tqdm import tqdm

        from mqbench.spec import one_line
        from primitives.workspace import Workspace

        folder = out / "benchmark"
        self._write(bench, folder, train, hold)
        if bench.kind == "mq":
            return {}  # one network: the search extracts it once, in this process
        ref, ids, recipe = self._recipe(self._config(str(folder / "search.toml"), str(out), **self._sizes(train, bench)))
        workspace = Workspace(ref)
        new = {}
        progress = self.settings.get("progress", True)
        for item in tqdm(ids, desc="statistics", unit="net", file=sys.stderr, disable=not progress):
            try:
                workspace.statistics([item], recipe.request, jobs=1, progress=False, cache_dir=recipe.cache_dir)
            except Exception as exc:
                new[int(item)] = f"statistics extraction failed: {one_line(exc)}"
        if new:
            train = [i for i in train if i not in new]
            if len(train) < 4:
                raise ConfigError(f"only {len(train)} items extract; need >= 4 (first failure: {next(iter(new.values()))})")
            self._write(bench, folder, train, hold)
        return new

    @staticmethod
    def _recipe(c):
        """The search's statistics recipe for config ``c``, computed as ``evolution.Search._prepare`` does
        (benchmark handle, search sample, terminals, probes); an equal recipe makes the search read every
        statistic from the disk cache. If the two ever drift apart the search still runs (it extracts what it
        is missing itself)."""
        from evoproxy.searchdata import DataRecipe
        from evoproxy.searchsample import search_items
        from evoproxy.space import SearchSpace
        from mqbench.benchmarks import BenchRef
        from primitives.core import REGISTRY
        from primitives.items import available_names, uses_hessian

        ref, bench = BenchRef.resolve(c.bench, c.table, c.gt_column, c.checkpoint)
        probes = c.hutchinson_probes if c.hutchinson_probes is not None else bench.default_probes
        available = [n for n in available_names(bench) if probes > 0 or not uses_hessian([n])]
        terminals = list(c.terminals) if c.terminals else [n for n in available if getattr(REGISTRY[n], "default", True)]
        space = SearchSpace(terminals, c.structure, dict(c.weights), c.max_chain, c.max_depth, c.max_size)
        fit, val = search_items(bench, c.samples, c.validation, c.seed, c.sampling)
        # ids: the validation items' too (extracted here as well); the recipe: the search samples', as the search's
        return ref, fit + val, DataRecipe.for_bench(ref, fit, space.terminals, probes, c.noise_std, c.batch,
                                               device=c.device)

    @staticmethod
    def _report(failed: dict) -> None:
        if failed:
            i, why = next(iter(failed.items()))
            print(f"warning: {len(failed)} item(s) left out (failed on the batch): item {i}: {why}"
                  + (f"; items {', '.join(map(str, list(failed)[1:6]))}{' ...' if len(failed) > 6 else ''}"
                     if len(failed) > 1 else ""), file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ after fit
    def _fitted(self) -> None:
        if not hasattr(self, "result_"):
            raise ConfigError("this ProxySearch is not fitted yet: call fit(...) first")

    def score_holdout(self, proxies, **options):
        """An :class:`~evoproxy.results.Evaluation` of ``proxies`` (baseline names, ``Proxy`` objects, files,
        callables) on the held-out items (:func:`evoproxy.api.evaluate` on ``<out>/benchmark/holdout.toml``;
        statistics extracted in this process, one network at a time)."""
        from evoproxy.api import evaluate

        self._fitted()
        if not self.holdout_indices_:
            raise ConfigError("no held-out items (holdout=0)")
        spec = Path(self.result_.out) / "benchmark" / "holdout.toml"
        options = {"progress": self.settings.get("progress", True), "device": self.settings.get("device"), **options}
        return evaluate(str(spec), list(proxies), samples=None, seed=self.seed, split="all",
                        batch=len(self.benchmark_.targets), jobs=1, **options)

    def predict(self, items, which: int | None = None) -> np.ndarray:
        """Scores of ``best_`` (or of hall-of-fame entry ``which``, 0: the best search fitness) for ``items``: networks (``nn.Module``), descriptions
        for the fitted factory, or bit configurations of the fitted model; NaN (with a warning) for one that fails."""
        from mqbench.spec import one_line
        from primitives.items import model_statistics

        import torch

        self._fitted()
        bench, proxy = self.benchmark_, self.best_ if which is None else self.hall_of_fame_[which]
        request = proxy.statistics_request(len(bench.targets))
        if bench.kind == "mq":
            configs = [bench.check_bits(b, i) for i, b in enumerate(list(items))]
            quantizer = bench.quantizer
            if isinstance(quantizer, str):
                from mqbench.spec import import_ref

                quantizer = import_ref(quantizer, (), "quantizer")
            stats = model_statistics(bench.fp_model(), bench.inputs, bench.targets, request, configs, quantizer)
            return np.array([proxy.value(s) for s in stats], dtype=float)
        out, errors = [], []
        for i, item in enumerate(list(items)):
            try:
                with torch.random.fork_rng(devices=[]):
                    net = self._network(item, i)
                    (stats,) = model_statistics(net, bench.inputs, bench.targets, request)
                out.append(float(proxy.value(stats)))
            except Exception as exc:
                errors.append(f"item {i}: {one_line(exc)}")
                out.append(float("nan"))
        if errors:
            print(f"warning: {len(errors)} item(s) scored NaN: {errors[0]}", file=sys.stderr, flush=True)
        return np.array(out, dtype=float)

    def _network(self, item, i: int):
        import copy

        import torch

        bench = self.benchmark_
        if isinstance(item, torch.nn.Module):
            net = copy.deepcopy(item)
        elif bench.factory is not None:
            torch.manual_seed(i)
            net = bench.factory(item)
        else:
            raise ConfigError(f"item {i} is a {type(item).__name__}; predict takes networks (nn.Module)")
        return net.train() if bench.mode == "train" else net.eval()

    def rank(self, items, which: int | None = None) -> list[int]:
        """Indices of ``items`` best first by :meth:`predict` (NaN last)."""
        scores = self.predict(items, which)
        return [int(i) for i in np.argsort(np.where(np.isnan(scores), -np.inf, -scores), kind="stable")]

    def export(self, path: str | Path, which: int | None = None) -> Path:
        """``best_`` (or hall-of-fame entry ``which``) as a standalone torch-only module (:meth:`SearchResult.export`)."""
        self._fitted()
        return self.result_.export(path, which)

    def plot(self, path: str | Path | None = None) -> Path:
        """Best and median fitness per generation (default ``<out>/progress.png``)."""
        self._fitted()
        return self.result_.plot(path)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items() if v is not None and k != "resume")
        head = f"ProxySearch({params})"
        if not hasattr(self, "result_"):
            return head
        hold = "" if not self.holdout_ else f"\n  holdout spearman {self.holdout_['spearman']:.4f} on {self.holdout_['n']} items"
        return f"{head}\n  best: {self.best_.formula}{hold}"
