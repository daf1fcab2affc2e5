"""Evolutionary search for a proxy: the generation loop, checkpoints, resume, outputs.

    from evoproxy.evolution.engine import Search
    from evoproxy.evolution.searchconfig import SearchConfig
    run_dir = Search(SearchConfig(bench="nb201-cifar10", out="runs/a", samples=64, population=32,
                                  generations=20, seed=0)).run()   # the run folder

(:func:`evoproxy.api.run_search` returns it as a :class:`~evoproxy.results.SearchResult`.)

Protocol
--------
* Search samples: ``bench.sample(samples, seed, "search")`` — the benchmark's search split only.
  Their statistics are extracted once (:func:`evoproxy.evolution.searchdata.load_samples`, disk-cached) into the
  benchmark's workspace (:class:`primitives.workspace.Workspace`); the search holds them and passes them to
  the scorers (worker processes build their own once).
* Generation 0: random trees until ``population`` valid, distinct candidates.
* Generation g >= 1: the ``elites`` best survive; the rest of the population is refilled with
  children (parents by :func:`evoproxy.evolution.selection.select_parents`; crossover with probability
  ``cx_prob``, then mutation of each child with probability ``mut_prob``), each child scored by
  :mod:`evoproxy.evolution.screening` (screening, then all samples) and its fitness by
  :mod:`evoproxy.evolution.fitness`. Up to ``MAX_ROUNDS`` rounds of children per generation; if still short,
  the best former members fill the population.
* Candidates already scored (same canonical formula) are never re-scored (a memo); with screening
  on, a candidate whose screening scores equal those of an earlier one inherits its outcome.
* Multi-fidelity (``multi_fidelity``, on by default; :mod:`evoproxy.evolution.racing`): a child enters the population only
  if its fitness reaches the ``entry_quantile`` of its parents' fitness (places still open after ``MAX_ROUNDS``
  rounds of children go to the best former members, as without it); it is raced on growing prefixes of the search samples (``rungs``) and rejected early when its fitness
  there is below that threshold minus the rung's ``margins``. ``audit`` also scores early-rejected children on
  every sample (decisions unchanged) and writes ``children.csv``.
* Randomness: Python's ``random`` (used by DEAP and :mod:`evoproxy.language.space`) is re-seeded at the start of
  every generation from (seed, generation) — per island with ``islands`` > 1 (:mod:`evoproxy.evolution.islands`:
  several populations, ring migration, restarts of stagnant islands) — so a resumed run draws exactly
  what an uninterrupted one would.
* Screening rejects a candidate past a deterministic cost bound (``screen_cost``, tensor elements;
  :mod:`evoproxy.evolution.screening`); the former wall-clock time-out is gone (its ``screen_time`` setting is
  retired: accepted, ignored, see ``searchconfig.RETIRED_KEYS``).
* After every generation ``checkpoint.json`` (every island's population, memo, log, hall of fame) is
  written atomically, then ``log.csv``, ``hall_of_fame.json``, ``best.json`` (and ``islands.csv``) are
  regenerated from it. ``--resume`` continues from the checkpoint; apart from the ``seconds`` column of
  ``log.csv``, the outputs equal those of an uninterrupted run with the same settings, for any ``--jobs``.
  ``--time-budget`` is the only wall-clock setting: it stops the run after the generation whose successor
  would pass it, and sizes an unset population/generation count from a measured rate
  (:mod:`evoproxy.evolution.budget`; such a run is recorded as machine-dependent in ``config.json``).
"""
from __future__ import annotations

import csv
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

from evoproxy.errors import ConfigError, EvoproxyError
from mqbench.fileio import atomic_write_text
from evoproxy.evolution.islands import Individual, Island, interleave, island_row, island_seed, migrate
from evoproxy.evolution.searchconfig import SearchConfig
from evoproxy.language.tree import Proxy, ProxyTree, canonical

CHECKPOINT_FORMAT = "evoproxy.search-checkpoint/1"
MAX_ROUNDS = 5
HALL_OF_FAME = 10


class Search:
    """One search run (see the module docstring); ``run()`` returns its run folder (why it stopped early: ``stopped``)."""

    def __init__(self, config: SearchConfig, resume: bool = False):
        config.validate()
        self.config = config if config.time_budget is not None else config.sized()
        self.sizing = None  # what evoproxy.evolution.budget chose (time-budget runs with unset sizes)
        self.out = Path(config.out)
        self.resume = resume
        self.started = time.perf_counter()

    @property
    def population(self) -> list[Individual]:
        """Every island's population, in island order (the one population with ``islands`` = 1)."""
        return [i for island in self.islands for i in island.population]

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        from evoproxy.scoring.scorer import reason
        from evoproxy.evolution.searchdata import DataRecipe, load_samples
        from evoproxy.evolution.searchsample import search_items, validation_count
        from evoproxy.language.space import SearchSpace
        from evoproxy.evolution.validation import Validation
        from mqbench.bench.benchmarks import BenchRef
        from primitives.core import REGISTRY
        from primitives.items import available_names, uses_hessian
        from primitives.workspace import Workspace

        c = self.config
        ref, bench = BenchRef.resolve(c.bench, c.table, c.gt_column, c.checkpoint)
        bench.verify()
        self.bench = bench
        workspace = Workspace(ref, bench)
        probes = c.hutchinson_probes if c.hutchinson_probes is not None else bench.default_probes
        self.probes = probes
        available = [n for n in available_names(bench) if probes > 0 or not uses_hessian([n])]  # --terminals may name any
        default = [n for n in available if getattr(REGISTRY[n], "default", True)]
        terminals = list(c.terminals) if c.terminals else default
        bad = [t for t in terminals if t not in available]
        if bad:
            raise ConfigError(f"terminal(s) {', '.join(bad)} not available here (available: {', '.join(available)})")
        self.space = SearchSpace(terminals, c.structure, dict(c.weights), c.max_chain, c.max_depth, c.max_size)
        self.ids, self.val_ids = search_items(bench, c.samples, c.validation, c.seed, c.sampling)
        asked = validation_count(c.samples, c.validation)
        if len(self.val_ids) < asked:
            print(f"note: the search split has {len(self.val_ids)} items besides the {c.samples} search samples: "
                  f"{len(self.val_ids) or 'no'} validation items (--validation {c.validation:g} asked for {asked})"
                  f"{'' if self.val_ids else '; best.json is the best fitness'}", file=sys.stderr)
        self.truth = np.asarray(bench.ground_truth(self.ids), dtype=float)
        self.size = np.asarray(bench.size(self.ids), dtype=float)
        recipe = DataRecipe.for_bench(ref, self.ids, self.space.terminals, probes, c.noise_std, c.batch,
                                      device=c.device)
        try:
            self.samples = load_samples(recipe, workspace, jobs=c.jobs, progress=c.progress)
        except EvoproxyError:
            raise
        except Exception as exc:  # nothing can be searched without the samples' statistics
            raise ConfigError(f"extracting the statistics of the {len(self.ids)} search samples failed: {reason(exc)}") from None
        self.validation = None if not self.val_ids else Validation(
            workspace, DataRecipe.for_bench(ref, self.val_ids, self.space.terminals, probes, c.noise_std, c.batch,
                                            device=c.device),
            bench.ground_truth(self.val_ids), bench.size(self.val_ids), c.fitness, c.seed, jobs=c.jobs, progress=c.progress)
        self.n_screen = min(c.screen_samples, len(self.ids))
        self.race_plan = self._race_plan()

    def _race_plan(self):
        """How children are scored (:mod:`evoproxy.evolution.racing`): screening, then the rungs of multi-fidelity (none when
        it is off), then the rest of the samples."""
        from evoproxy.evolution.racing import RacePlan, rung_ends

        c = self.config
        rungs = rung_ends(len(self.ids), self.n_screen, c.rungs) if c.multi_fidelity and c.screening else ()
        margins = tuple(float(m) for m in c.margins[:len(rungs)])
        if c.audit and not rungs:  # audit without multi-fidelity: estimates at the default rungs, no rejection
            rungs = rung_ends(len(self.ids), self.n_screen, c.rungs)
            margins = (math.inf,) * len(rungs)
        return RacePlan(len(self.ids), self.n_screen, rungs, margins, c.screen_cost, c.fitness,
                        tuple(float(v) for v in self.truth), None if self.size is None else tuple(float(v) for v in self.size),
                        c.seed, c.audit)

    # ------------------------------------------------------------------ state
    def _fresh_state(self) -> None:
        self.generation = -1
        self.islands: list[Island] = [Island() for _ in range(self.config.islands)]
        self.island_log: list[dict] = []
        self.memo: dict[str, dict] = {}  # canonical -> {"fitness","orientation","scores"} or {"reason"}
        self.screen_memo: dict[tuple, str] = {}
        self.log: list[dict] = []
        self.hof: list[Individual] = []
        self.val_memo: dict[str, float] = {}  # hall-of-fame key -> fitness on the validation items (--validation)
        self.children: list[dict] = []  # children.csv rows (audit)
        self.elapsed = 0.0
        self.prep_seconds = 0.0  # loading (or extracting) the statistics, and the workers' warm-up: not in elapsed
        self.stopped = None

    def _state_json(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "settings": self.config.result_settings(),
                "terminals": self.space.terminals, "hutchinson_probes": self.probes,
                "generation": self.generation, "elapsed": self.elapsed, "prep_seconds": self.prep_seconds, "stopped": self.stopped,
                "sizing": self.sizing, "population": [i.to_json() for i in self.population],
                "islands": [i.to_json() for i in self.islands], "island_log": self.island_log,
                "memo": self.memo, "screen_memo": [[list(k), v] for k, v in self.screen_memo.items()],
                "log": self.log, "hall_of_fame": [i.to_json() for i in self.hof], "validation": self.val_memo}

    def _load_state(self, state: dict) -> None:
        from evoproxy.evolution.runfiles import renamed

        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{self.out / 'checkpoint.json'} is not a search checkpoint")
        theirs, ours = state["settings"], self.config.result_settings()
        diff = [k for k in ours if json.dumps(theirs.get(k)) != json.dumps(ours[k])]
        if state.get("terminals", self.space.terminals) != self.space.terminals:
            diff.append("terminals (the statistics available here changed: "
                        f"{', '.join(sorted(set(state['terminals']) ^ set(self.space.terminals)))})")
        if state.get("hutchinson_probes", self.probes) != self.probes:
            diff.append("hutchinson_probes")
        if diff:
            raise ConfigError(f"--resume with different settings than the run in {self.out}: {', '.join(diff)}")
        self.generation = int(state["generation"])
        self.elapsed = float(state["elapsed"])
        self.prep_seconds = float(state.get("prep_seconds", 0.0))
        self.sizing = state.get("sizing")
        self.stopped = state.get("stopped")
        if "islands" in state:
            self.islands = [Island.from_json(d) for d in state["islands"]]
        else:  # a checkpoint of the single-population search
            pop = [Individual.from_json(d) for d in state["population"]]
            self.islands = [Island(pop, max((i.fitness for i in pop), default=float("-inf")), max(self.generation, 0))]
        self.island_log = list(state.get("island_log", []))
        self.memo = dict(state["memo"])
        self.screen_memo = {tuple(k): v for k, v in state["screen_memo"]}
        self.log = [renamed(row) for row in state["log"]]  # a checkpoint's log: columns' current names
        self.hof = [Individual.from_json(d) for d in state["hall_of_fame"]]
        self.val_memo = {k: float(v) for k, v in state.get("validation", {}).items()}
        self.children = self._read_children(self.generation)

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
        import dataclasses

        from evoproxy.evolution.budget import size_for_budget

        ckpt = self.out / "checkpoint.json"
        if ckpt.exists():
            if not self.resume:
                raise ConfigError(f"{self.out} already holds a search; pass --resume to continue it or choose another --out")
            try:
                state = json.loads(ckpt.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"cannot read {ckpt}: {exc}") from None
            settings = state.get("settings", {})  # sizes left unset here: the run's own (measured or given)
            self.config = dataclasses.replace(self.config, **{k: settings.get(k) for k in ("population", "generations")
                                                              if getattr(self.config, k) is None})
            self._load_state(state)
        else:
            if self.resume and (self.out / "config.json").exists():
                print(f"note: {self.out} has no checkpoint yet; starting from generation 0", file=sys.stderr)
            self._fresh_state()
            if self.config.population is None or self.config.generations is None:
                size_for_budget(self)
        self.config.validate()
        if self.config.population is None or self.config.generations is None:
            raise ConfigError(f"the checkpoint in {self.out} has no population/generations; pass them")
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_config()

    def _write_config(self) -> None:
        config = {**self.config.portable(), "search_ids": [int(i) for i in self.ids],
                  **({"validation_ids": [int(i) for i in self.val_ids]} if self.val_ids else {}),
                  "hutchinson_probes_used": self.probes, "terminals_used": self.space.terminals,
                  "benchmark": self.bench.name}
        if self.config.time_budget is not None:
            config["sizing"] = self.sizing or {
                "sized_by": "given", "machine_dependent": "only where the time budget stops the run early",
                "wall_clock": "time_budget is the only wall-clock setting; screening uses the deterministic --screen-cost"}
        atomic_write_text(self.out / "config.json", json.dumps(config, indent=2) + "\n")

    # ------------------------------------------------------------------ scoring
    def _score(self, trees: list[ProxyTree], counts: dict, thresholds=None) -> list[dict]:
        """Outcome (memo entry) of each tree, in order; updates ``counts`` (:func:`evoproxy.evolution.racing.decide`)."""
        from evoproxy.evolution.racing import decide

        return decide(self, trees, counts, thresholds)

    # ------------------------------------------------------------------ generations
    def _new_counts(self) -> dict:
        from evoproxy.evolution.screening import LOG_REASONS

        return {"evaluated": 0, "valid": 0, "cache_hits": 0, "equivalent_hits": 0,
                **{f"rejected_{r}": 0 for r in LOG_REASONS}, "early_rejected": 0, "full_fidelity": 0,
                "below_population": 0}

    def _accept(self, trees, outcomes, into: list, taken: set, need: int, generation: int,
                threshold: float | None = None, counts: dict | None = None) -> None:
        """Append the valid, new children (at least ``threshold`` fit, when given) to ``into``, up to ``need``."""
        for t, o in zip(trees, outcomes):
            if len(into) >= need:
                return
            if "reason" in o:
                continue
            if threshold is not None and o["fitness"] < threshold:  # multi-fidelity: below the parent population
                counts["below_population"] += 1
                continue
            k = canonical(t)
            if self.config.diversity and k in taken:
                continue
            ind = Individual(t, k, o["fitness"], o["orientation"], o["scores"], generation)
            if self._ranking_taken(ind, taken):
                continue
            taken.add(k)
            into.append(ind)

    def _ranking_taken(self, ind: Individual, taken: set) -> bool:
        from evoproxy.evolution.selection import ranking_taken

        return self.config.diversity and self.config.distinct_rankings and ranking_taken(ind, taken)

    def _initial(self, counts, generation: int = 0):
        """A random population (a generator for :func:`evoproxy.evolution.islands.interleave`: yields trees, gets outcomes)."""
        c = self.config
        pop: list[Individual] = []
        taken: set = set()
        for _ in range(MAX_ROUNDS * 4):
            need = c.population - len(pop)
            if need <= 0:
                break
            trees = [self.space.random_tree() for _ in range(2 * need)]
            self._accept(trees, (yield trees, None), pop, taken, c.population, generation)
        if len(pop) < 2:
            raise ConfigError(f"no valid candidate among {counts['evaluated']} random trees; "
                              f"rejections: {self._rejections(counts)}")
        return pop

    @staticmethod
    def _rejections(counts) -> str:
        return ", ".join(f"{k[9:]} {v}" for k, v in counts.items() if k.startswith("rejected_") and v) or "none"

    def _next(self, population: list[Individual], counts, generation: int):
        """The next population of ``population`` (a generator like :meth:`_initial`)."""
        from evoproxy.evolution.selection import select_parents

        c = self.config
        ranked = sorted(population, key=lambda i: -i.fitness)
        # multi-fidelity: a child must reach the entry quantile of its parents' fitness to enter
        threshold = None
        if c.multi_fidelity and c.screening:
            threshold = float(np.quantile([i.fitness for i in population], c.entry_quantile))
        elites = ranked[: c.elites]
        need = c.population - len(elites)
        children: list[Individual] = []
        taken = {i.key for i in elites}
        for ind in elites:
            self._ranking_taken(ind, taken)
        for _ in range(MAX_ROUNDS):
            short = need - len(children)
            if short <= 0:
                break
            parents = select_parents(population, 2 * short, c.tournament, c.diversity, c.novelty_weight)
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
            self._accept(trees, (yield trees, threshold), children, taken, need, generation, threshold, counts)
        # still short: keep the best former members (distinct rankings first, then formulas that rank alike)
        for distinct in (True, False):
            for ind in ranked[c.elites:]:
                if len(children) < need and (not c.diversity or (
                        ind.key not in taken and not (distinct and self._ranking_taken(ind, taken)))):
                    taken.add(ind.key)
                    children.append(ind)
        return elites + children

    def _generation(self, g: int, counts: dict) -> None:
        """Every island's population of generation ``g``: their candidates scored together, then migration and
        restarts (:mod:`evoproxy.evolution.islands`)."""
        c = self.config
        restart = [g == 0 or isl.stagnant(g, c.restart_after) for isl in self.islands]
        procs = [self._initial(counts, g) if r else self._next(isl.population, counts, g)
                 for isl, r in zip(self.islands, restart)]
        pops = interleave(procs, [island_seed(c.seed, g, i) for i in range(len(self.islands))],
                          lambda trees, thresholds: self._score(trees, counts, thresholds))
        for isl, pop in zip(self.islands, pops):
            isl.population = pop
        arrived = [0] * len(pops)
        if len(pops) > 1 and c.migrants > 0 and g > 0 and g % c.migration_interval == 0:
            arrived = migrate(pops, c.migrants, c.diversity)
        for i, isl in enumerate(self.islands):
            isl.record(g, restart[i] and g > 0)
            if len(pops) > 1:
                self.island_log.append(island_row(g, i, isl, restart[i] and g > 0, arrived[i]))

    def _update_hof(self) -> None:
        merged = {i.key: i for i in self.hof}
        for ind in self.population:
            if ind.key not in merged or merged[ind.key].generation > ind.generation:
                merged[ind.key] = ind
        self.hof = sorted(merged.values(), key=lambda i: (-i.fitness, i.generation, i.key))[:HALL_OF_FAME]
        if self.validation is not None:
            for ind in self.hof:
                if ind.key not in self.val_memo:
                    self.val_memo[ind.key] = self.validation.fitness(ind)

    def best(self) -> Individual:
        """The answer: the hall of fame's best on the validation items (``--validation``), else its first."""
        from evoproxy.evolution.validation import choose

        return choose(self.hof, self.val_memo) if self.validation is not None else self.hof[0]

    def _log_row(self, generation: int, counts: dict, seconds: float) -> dict:
        from evoproxy.evolution.runfiles import log_row

        return log_row(self, generation, counts, seconds)

    # ------------------------------------------------------------------ outputs
    def _checkpoint(self) -> None:
        atomic_write_text(self.out / "checkpoint.json", json.dumps(self._state_json()))
        self._write_outputs()

    def _write_outputs(self) -> None:
        from evoproxy.evolution.runfiles import write_outputs

        write_outputs(self)

    def _read_children(self, generation: int) -> list[dict]:
        """The rows of ``children.csv`` up to ``generation`` (a resumed audited run drops the unfinished one's)."""
        path = self.out / "children.csv"
        if not self.config.audit or not path.exists():
            return []
        with open(path, newline="") as f:
            return [row for row in csv.DictReader(f) if int(row["generation"]) <= generation]

    def _proxy(self, ind: Individual) -> Proxy:
        from evoproxy.evolution.runfiles import proxy_of

        return proxy_of(self, ind)

    # ------------------------------------------------------------------ main loop
    def run(self) -> Path:
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

    def _run(self) -> Path:
        from tqdm import tqdm

        from evoproxy.evolution.budget import MAX_GENERATIONS, resize_for_budget, stop_reason

        t_prep = time.perf_counter()
        self._prepare()
        prepared = time.perf_counter() - t_prep
        self._open_run_dir()
        c = self.config  # its sizes are known now
        if self.generation < 0:  # the budget's clock starts after the preparation (evoproxy.evolution.budget)
            sized = self.sizing if self.sizing and self.sizing.get("sized_by") == "time_budget" else {}
            self.prep_seconds = prepared + sized.get("warmup_seconds", 0.0)
            self.elapsed += sized.get("calibration_seconds", 0.0)
            if c.progress:
                print(f"statistics of {len(self.ids)} search items{f' and {len(self.val_ids)} validation items' if self.val_ids else ''} "
                      f"ready in {self.prep_seconds:.0f} s{' (before the time budget starts)' if c.time_budget else ''}",
                      file=sys.stderr)
        bar = tqdm(total=None if c.generations >= MAX_GENERATIONS else c.generations + 1, initial=self.generation + 1, desc="search", unit="gen",
                   file=sys.stderr, disable=not c.progress, dynamic_ncols=True)
        try:
            writing = 0.0  # the last checkpoint's writing time (its successor's is about the same)
            while self.generation < c.generations and self.stopped is None:
                g = self.generation + 1
                t0 = time.perf_counter()
                counts = self._new_counts()
                self._generation(g, counts)
                self._update_hof()
                seconds = time.perf_counter() - t0
                self.elapsed += seconds
                self.generation = g
                self.log.append(self._log_row(g, counts, seconds))
                self.stopped = stop_reason(c, self.log, self.elapsed + writing)
                if self.stopped is None and resize_for_budget(self):
                    c = self.config
                t1 = time.perf_counter()
                self._checkpoint()
                writing = time.perf_counter() - t1  # writing the run folder counts against the budget too
                self.elapsed += writing
                bar.set_postfix(best=f"{self.hof[0].fitness:.4f}", valid=f"{self.log[-1]['valid_rate']:.2f}")
                bar.update(1)
        finally:
            bar.close()
        self._write_outputs()
        return self.out
