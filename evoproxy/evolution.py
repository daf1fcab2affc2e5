"""Evolutionary search for a proxy: the generation loop, checkpoints, resume, outputs.

    from evoproxy.evolution import run_search
    from evoproxy.searchconfig import SearchConfig
    result = run_search(SearchConfig(bench="nb201-cifar10", out="runs/a", samples=64, population=32,
                                     generations=20, seed=0))
    result.best.formula

Protocol
--------
* Search samples: ``bench.sample(samples, seed, "search")`` — the benchmark's search split only.
  Their primitives are extracted once (``searchdata.load_stats``, disk-cached).
* Generation 0: random trees until ``population`` valid, distinct candidates.
* Generation g >= 1: the ``elites`` best survive; the rest of the population is refilled with
  children (parents by :func:`evoproxy.selection.select_parents`; crossover with probability
  ``cx_prob``, then mutation of each child with probability ``mut_prob``), each child scored by
  :mod:`evoproxy.screening` (screening, then all samples) and its fitness by
  :mod:`evoproxy.fitness`. Up to ``MAX_ROUNDS`` rounds of children per generation; if still short,
  the best former members fill the population.
* Candidates already scored (same canonical formula) are never re-scored (a memo); with screening
  on, a candidate whose screening scores equal those of an earlier one inherits its outcome.
* Randomness: Python's ``random`` (used by DEAP and :mod:`evoproxy.space`) is re-seeded at the start of
  every generation from (seed, generation), so a resumed run draws exactly what an uninterrupted
  one would.
* After every generation ``checkpoint.json`` (population, memo, log, hall of fame) is written
  atomically, then ``log.csv``, ``hall_of_fame.json`` and ``best.json`` are regenerated from it.
  ``--resume`` continues from the checkpoint; apart from the ``seconds`` column of ``log.csv``,
  the outputs equal those of an uninterrupted run with the same settings (the ``timeout``
  screening rule and ``--time-budget`` are the two machine-speed dependent parts).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evoproxy.errors import ConfigError, EvoproxyError
from mqbench.fileio import atomic_write_text
from evoproxy.results import SearchResult
from evoproxy.searchconfig import SearchConfig
from evoproxy.tree import Proxy, ProxyTree, canonical, parse_tree, render

CHECKPOINT_FORMAT = "evoproxy.search-checkpoint/1"
MAX_ROUNDS = 5
HALL_OF_FAME = 10
@dataclass
class Individual:
    tree: ProxyTree
    key: str
    fitness: float
    orientation: int
    scores: list
    generation: int

    def to_json(self) -> dict:
        return {"tree": self.tree.to_json(), "fitness": self.fitness, "orientation": self.orientation,
                "scores": self.scores, "generation": self.generation}

    @classmethod
    def from_json(cls, d: dict) -> "Individual":
        tree = parse_tree(d["tree"])
        return cls(tree, canonical(tree), float(d["fitness"]), int(d["orientation"]), list(d["scores"]),
                   int(d["generation"]))


# ------------------------------------------------------------------------------------- helpers

def _seed_for(seed: int, generation: int) -> int:
    from primitives.core import derive_seed

    return derive_seed("search", int(seed), int(generation))


def _screen_key(values) -> tuple:
    return tuple(float(f"{v:.12g}") for v in values)


class Search:
    """One search run (see the module docstring); ``run()`` returns a :class:`~evoproxy.results.SearchResult`."""

    def __init__(self, config: SearchConfig, resume: bool = False):
        config.validate()
        self.config = config
        self.out = Path(config.out)
        self.resume = resume
        self.started = time.perf_counter()

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        from evoproxy.scoring import reason
        from evoproxy.searchdata import DataRecipe, load_stats
        from evoproxy.space import SearchSpace
        from mqbench.benchmarks import BenchSpec
        from primitives.core import REGISTRY
        from primitives.items import available_names, uses_hessian

        c = self.config
        spec, bench = BenchSpec.resolve(c.bench, c.table, c.gt_column, c.checkpoint)
        bench.verify()
        self.bench = bench
        probes = c.hutchinson_probes if c.hutchinson_probes is not None else bench.default_probes
        self.probes = probes
        available = [n for n in available_names(bench) if probes > 0 or not uses_hessian([n])]  # --terminals may name any
        default = [n for n in available if getattr(REGISTRY[n], "default", True)]
        terminals = list(c.terminals) if c.terminals else default
        bad = [t for t in terminals if t not in available]
        if bad:
            raise ConfigError(f"terminal(s) {', '.join(bad)} not available here (available: {', '.join(available)})")
        self.space = SearchSpace(terminals, c.structure, dict(c.weights), c.max_chain, c.max_depth, c.max_size)
        self.ids = bench.sample(c.samples, c.seed, "search")
        self.truth = np.asarray(bench.ground_truth(self.ids), dtype=float)
        self.size = np.asarray(bench.size(self.ids), dtype=float)
        self.recipe = DataRecipe.for_bench(spec, self.ids, self.space.terminals, probes, c.noise_std, c.batch)
        try:
            self.stats = load_stats(self.recipe, jobs=c.jobs, progress=c.progress)
        except EvoproxyError:
            raise
        except Exception as exc:  # nothing can be searched without the samples' primitives
            raise ConfigError(f"extracting the primitives of the {len(self.ids)} search samples failed: {reason(exc)}") from None
        self.n_screen = min(c.screen_samples, len(self.ids))

    # ------------------------------------------------------------------ state
    def _fresh_state(self) -> None:
        self.generation = -1
        self.population: list[Individual] = []
        self.memo: dict[str, dict] = {}  # canonical -> {"fitness","orientation","scores"} or {"reason"}
        self.screen_memo: dict[tuple, str] = {}
        self.log: list[dict] = []
        self.hof: list[Individual] = []
        self.elapsed = 0.0
        self.prep_seconds = 0.0  # extraction of the search samples' statistics (part of elapsed)
        self.stopped = None

    def _state_json(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "settings": self.config.result_settings(),
                "terminals": self.space.terminals, "hutchinson_probes": self.probes,
                "generation": self.generation, "elapsed": self.elapsed, "prep_seconds": self.prep_seconds, "stopped": self.stopped,
                "population": [i.to_json() for i in self.population],
                "memo": self.memo, "screen_memo": [[list(k), v] for k, v in self.screen_memo.items()],
                "log": self.log, "hall_of_fame": [i.to_json() for i in self.hof]}

    def _load_state(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{self.out / 'checkpoint.json'} is not a search checkpoint")
        theirs, ours = state["settings"], self.config.result_settings()
        diff = [k for k in ours if json.dumps(theirs.get(k)) != json.dumps(ours[k])]
        if state.get("terminals", self.space.terminals) != self.space.terminals:
            diff.append("terminals (the primitives available here changed: "
                        f"{', '.join(sorted(set(state['terminals']) ^ set(self.space.terminals)))})")
        if state.get("hutchinson_probes", self.probes) != self.probes:
            diff.append("hutchinson_probes")
        if diff:
            raise ConfigError(f"--resume with different settings than the run in {self.out}: {', '.join(diff)}")
        self.generation = int(state["generation"])
        self.elapsed = float(state["elapsed"])
        self.prep_seconds = float(state.get("prep_seconds", 0.0))
        self.stopped = state.get("stopped")
        self.population = [Individual.from_json(d) for d in state["population"]]
        self.memo = dict(state["memo"])
        self.screen_memo = {tuple(k): v for k, v in state["screen_memo"]}
        self.log = list(state["log"])
        self.hof = [Individual.from_json(d) for d in state["hall_of_fame"]]

    def _lock_run_dir(self):
        """Hold ``<out>/.lock`` for the whole run (a second process on the same folder gets a one-line error,
        before any work); returns the lock and whether the folder was created here."""
        from mqbench.fileio import FileLock

        created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            return FileLock(self.out / ".lock", f"run folder {self.out}").acquire(), created
        except BaseException:
            if created:
                self.out.rmdir()
            raise

    def _open_run_dir(self) -> None:
        ckpt = self.out / "checkpoint.json"
        if ckpt.exists():
            if not self.resume:
                raise ConfigError(f"{self.out} already holds a search; pass --resume to continue it or choose another --out")
            try:
                state = json.loads(ckpt.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"cannot read {ckpt}: {exc}") from None
            self._load_state(state)
        else:
            if self.resume and (self.out / "config.json").exists():
                print(f"note: {self.out} has no checkpoint yet; starting from generation 0", file=sys.stderr)
            self._fresh_state()
        self.out.mkdir(parents=True, exist_ok=True)
        config = {**self.config.portable(), "search_ids": [int(i) for i in self.ids],
                  "hutchinson_probes_used": self.probes, "terminals_used": self.space.terminals,
                  "benchmark": self.bench.name}
        atomic_write_text(self.out / "config.json", json.dumps(config, indent=2) + "\n")

    # ------------------------------------------------------------------ scoring
    def _score(self, trees: list[ProxyTree], counts: dict) -> list[dict]:
        """Outcome (memo entry) of each tree, in order; updates ``counts``."""
        from evoproxy.screening import score_many
        from evoproxy.fitness import oriented_fitness

        c = self.config
        keys = [canonical(t) for t in trees]
        todo: dict[str, ProxyTree] = {}
        for k, t in zip(keys, trees):
            if k in self.memo:
                counts["cache_hits"] += 1
            elif k not in todo:
                todo[k] = t
        names = list(todo)
        counts["evaluated"] += len(trees)

        def finish(k, scores):
            fit, orient = oriented_fitness(c.fitness, scores, self.truth, self.size, c.seed)
            if not math.isfinite(fit):
                self.memo[k] = {"reason": "nan"}
            else:
                self.memo[k] = {"fitness": fit, "orientation": orient, "scores": [float(s) for s in scores]}

        if c.screening:
            screened = score_many(self.recipe, [todo[k] for k in names], 0, self.n_screen, c.jobs, c.screen_time)
            full_needed = []
            for k, s in zip(names, screened):
                if s.reason:
                    self.memo[k] = {"reason": s.reason}
                    continue
                skey = _screen_key(s.scores)
                if skey in self.screen_memo and self.screen_memo[skey] in self.memo:
                    self.memo[k] = dict(self.memo[self.screen_memo[skey]])
                    counts["equivalent_hits"] += 1
                    continue
                self.screen_memo[skey] = k
                full_needed.append((k, s.scores))
            if self.n_screen < len(self.ids):
                rest = score_many(self.recipe, [todo[k] for k, _ in full_needed], self.n_screen, None, c.jobs, None,
                                  check_constant=False)
            else:
                rest = [None] * len(full_needed)
            for (k, head), r in zip(full_needed, rest):
                if r is not None and r.reason:
                    self.memo[k] = {"reason": r.reason}
                    continue
                scores = np.asarray(head + (r.scores if r is not None else []), dtype=float)
                if np.ptp(scores) <= 1e-12 * max(1.0, float(np.max(np.abs(scores)))):
                    self.memo[k] = {"reason": "constant"}
                    continue
                finish(k, scores)
        else:
            full = score_many(self.recipe, [todo[k] for k in names], 0, None, c.jobs, None)
            for k, s in zip(names, full):
                if s.reason:
                    self.memo[k] = {"reason": s.reason}
                else:
                    finish(k, np.asarray(s.scores, dtype=float))
        outcomes = [self.memo[k] for k in keys]
        for o in outcomes:
            if "reason" in o:
                counts[f"rejected_{o['reason']}"] = counts.get(f"rejected_{o['reason']}", 0) + 1
            else:
                counts["valid"] += 1
        return outcomes

    # ------------------------------------------------------------------ generations
    def _new_counts(self) -> dict:
        from evoproxy.screening import REASONS

        return {"evaluated": 0, "valid": 0, "cache_hits": 0, "equivalent_hits": 0,
                **{f"rejected_{r}": 0 for r in REASONS}}

    def _accept(self, trees, outcomes, into: list, taken: set, need: int, generation: int) -> None:
        for t, o in zip(trees, outcomes):
            if len(into) >= need:
                return
            if "reason" in o:
                continue
            k = canonical(t)
            if self.config.diversity and k in taken:
                continue
            taken.add(k)
            into.append(Individual(t, k, o["fitness"], o["orientation"], o["scores"], generation))

    def _initial(self, counts) -> list[Individual]:
        c = self.config
        pop: list[Individual] = []
        taken: set = set()
        for _ in range(MAX_ROUNDS * 4):
            need = c.population - len(pop)
            if need <= 0:
                break
            trees = [self.space.random_tree() for _ in range(2 * need)]
            self._accept(trees, self._score(trees, counts), pop, taken, c.population, 0)
        if len(pop) < 2:
            raise ConfigError(f"no valid candidate among {counts['evaluated']} random trees; "
                              f"rejections: {self._rejections(counts)}")
        return pop

    @staticmethod
    def _rejections(counts) -> str:
        return ", ".join(f"{k[9:]} {v}" for k, v in counts.items() if k.startswith("rejected_") and v) or "none"

    def _next(self, counts, generation: int) -> list[Individual]:
        from evoproxy.selection import select_parents

        c = self.config
        ranked = sorted(self.population, key=lambda i: -i.fitness)
        elites = ranked[: c.elites]
        need = c.population - len(elites)
        children: list[Individual] = []
        taken = {i.key for i in elites}
        for _ in range(MAX_ROUNDS):
            short = need - len(children)
            if short <= 0:
                break
            parents = select_parents(self.population, 2 * short, c.tournament, c.diversity, c.novelty_weight)
            trees = []
            for a, b in zip(parents[0::2], parents[1::2]):
                x, y = a.tree, b.tree
                if random.random() < c.cx_prob:
                    x, y = self.space.crossover(x, y)
                if random.random() < c.mut_prob:
                    x = self.space.mutate(x)
                if random.random() < c.mut_prob:
                    y = self.space.mutate(y)
                trees += [x, y]
            if c.diversity:  # only new formulas are worth scoring
                fresh, seen = [], set(taken)
                for t in trees:
                    k = canonical(t)
                    if k not in seen:
                        seen.add(k)
                        fresh.append(t)
                counts["duplicates_dropped"] = counts.get("duplicates_dropped", 0) + len(trees) - len(fresh)
                trees = fresh
            self._accept(trees, self._score(trees, counts), children, taken, need, generation)
        for ind in ranked[c.elites:]:  # still short: keep the best former members
            if len(children) >= need:
                break
            if not c.diversity or ind.key not in taken:
                taken.add(ind.key)
                children.append(ind)
        return elites + children

    def _update_hof(self) -> None:
        merged = {i.key: i for i in self.hof}
        for ind in self.population:
            if ind.key not in merged or merged[ind.key].generation > ind.generation:
                merged[ind.key] = ind
        self.hof = sorted(merged.values(), key=lambda i: (-i.fitness, i.generation, i.key))[:HALL_OF_FAME]

    def _log_row(self, generation: int, counts: dict, seconds: float) -> dict:
        from evoproxy.screening import REASONS
        from evoproxy.selection import mean_pairwise_distance

        fit = np.array([i.fitness for i in self.population])
        best = max(self.population, key=lambda i: i.fitness)
        n = max(counts["evaluated"], 1)
        return {"generation": generation, "evaluated": counts["evaluated"], "valid": counts["valid"],
                "valid_rate": round(counts["valid"] / n, 6), "cache_hits": counts["cache_hits"],
                "equivalent_hits": counts["equivalent_hits"],
                **{f"rejected_{r}": round(counts.get(f"rejected_{r}", 0) / n, 6) for r in REASONS},
                "best_fitness": round(float(fit.max()), 6), "median_fitness": round(float(np.median(fit)), 6),
                "unique_formulas": len({i.key for i in self.population}),
                "mean_pairwise_distance": round(mean_pairwise_distance([i.scores for i in self.population]), 6),
                "best_formula": render(best.tree), "seconds": round(seconds, 3)}

    # ------------------------------------------------------------------ outputs
    def _checkpoint(self) -> None:
        atomic_write_text(self.out / "checkpoint.json", json.dumps(self._state_json()))
        self._write_outputs()

    def _write_outputs(self) -> None:
        if self.log:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(self.log[0]))
            writer.writeheader()
            writer.writerows(self.log)
            atomic_write_text(self.out / "log.csv", buf.getvalue())
        hof = [{"rank": r + 1, "formula": self._proxy(i).formula, "fitness": i.fitness, "generation": i.generation,
                "tree": i.tree.to_json(), "orientation": i.orientation} for r, i in enumerate(self.hof)]
        atomic_write_text(self.out / "hall_of_fame.json", json.dumps(hof, indent=2, ensure_ascii=False) + "\n")
        if self.hof:
            text = json.dumps(self._proxy(self.hof[0]).to_json(), indent=2, ensure_ascii=False) + "\n"
            atomic_write_text(self.out / "best.json", text)

    def _proxy(self, ind: Individual) -> Proxy:
        from evoproxy.metrics import partial_spearman, spearman

        c = self.config
        s = ind.orientation * np.asarray(ind.scores, dtype=float)
        prims = {"noise_std": c.noise_std}
        from primitives.items import uses_hessian

        if uses_hessian(ind.tree.terminals()):
            prims["hutchinson_probes"] = self.probes
        from mqbench.dataroot import portable_path

        search = {"bench": self.bench.name, "table": portable_path(c.table), "gt_column": c.gt_column, "samples": len(self.ids),
                  "split": "search", "seed": c.seed, "structure": c.structure, "fitness": c.fitness,
                  "fitness_value": ind.fitness, "search_spearman": spearman(s, self.truth),
                  "search_partial_spearman": partial_spearman(s, self.truth, self.size),
                  "generation_found": ind.generation, "batch": c.batch}
        return Proxy(ind.tree, ind.orientation, prims, search)

    # ------------------------------------------------------------------ main loop
    def run(self) -> SearchResult:
        from mqbench.parallel import use_backend

        c = self.config
        lock, created = self._lock_run_dir()
        try:
            with use_backend(c.backend, c.scheduler, jobs=c.jobs):
                return self._run()
        finally:
            lock.release()
            if created and not any(self.out.iterdir()):  # failed before writing anything: leave no trace
                self.out.rmdir()

    def _run(self) -> SearchResult:
        from tqdm import tqdm

        c = self.config
        t_prep = time.perf_counter()
        self._prepare()
        self._open_run_dir()
        if self.generation < 0:
            self.prep_seconds = time.perf_counter() - t_prep
            self.elapsed += self.prep_seconds
        bar = tqdm(total=c.generations + 1, initial=self.generation + 1, desc="search", unit="gen",
                   file=sys.stderr, disable=not c.progress, dynamic_ncols=True)
        try:
            while self.generation < c.generations and self.stopped is None:
                g = self.generation + 1
                t0 = time.perf_counter()
                random.seed(_seed_for(c.seed, g))
                counts = self._new_counts()
                self.population = self._initial(counts) if g == 0 else self._next(counts, g)
                self._update_hof()
                seconds = time.perf_counter() - t0
                self.elapsed += seconds
                self.generation = g
                self.log.append(self._log_row(g, counts, seconds))
                mean_gen = (self.elapsed - self.prep_seconds) / (g + 1)  # a generation's time, extraction excluded
                if c.time_budget is not None and g < c.generations and self.elapsed + mean_gen > c.time_budget:
                    self.stopped = f"time budget {c.time_budget:g} s reached after generation {g}"
                self._checkpoint()
                bar.set_postfix(best=f"{self.hof[0].fitness:.4f}", valid=f"{self.log[-1]['valid_rate']:.2f}")
                bar.update(1)
        finally:
            bar.close()
        self._write_outputs()
        return SearchResult.load(self.out, stopped=self.stopped)


def run_search(config: SearchConfig, resume: bool = False) -> SearchResult:
    return Search(config, resume).run()
