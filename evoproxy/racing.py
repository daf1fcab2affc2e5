"""Multi-fidelity scoring of a search's children: screening, then racing over growing prefixes of the samples.

A child (a candidate tree) is scored on contiguous ranges of the search samples, each range once:

1. **screening**: samples ``0 .. n_screen - 1`` (:func:`evoproxy.screening.score_range`: shape, size, NaN,
   constant and cost rejections). A child whose screening scores equal those of an earlier candidate
   (``known`` screening keys) stops here: the search gives it that candidate's outcome.
2. **rungs** (multi-fidelity): at each rung end ``r`` (a number of samples, increasing) the child's fitness on
   samples ``0 .. r - 1`` is its *estimate*; a child whose estimate is below ``threshold - margin`` of that rung
   is *rejected early* and never scored on the rest. ``threshold`` is the fitness the child must reach to enter
   the population (the search passes the ``entry_quantile`` of its parents' fitness; ``-inf`` for a random
   population, which disables rejection). The margins are chosen from data: ``python -m experiments.race_margins``
   reads the ``children.csv`` of audited runs.
3. **full**: the remaining samples; the child's full score vector.

The search samples are a seeded random sample of the benchmark's search split, so every prefix is a random
subset of them. The children are raced on the search's :class:`evoproxy.searchdata.SearchSamples` (statistics and
their stacked form). Work is split into chunks of children run in worker processes (one dispatch per call, the
whole race inside the worker, each process with its own samples built once); outcomes do not depend on ``jobs``: ``known`` only lets a worker stop early
for a child whose outcome the search already knows, and the search resolves in-batch equivalents in order.

With ``audit`` a child rejected early is still scored on every sample (the decision is unchanged), so that
the search can record what full fidelity would have said (``children.csv``; ``early_reject_error``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NO_THRESHOLD = -math.inf


def screen_key(values) -> tuple:
    """Screening scores rounded to 12 significant digits: equal keys mark equivalent candidates."""
    return tuple(float(f"{v:.12g}") for v in values)


@dataclass(frozen=True)
class RacePlan:
    """How children are scored (picklable; the same for every child of a call)."""

    n_samples: int
    n_screen: int
    rungs: tuple = ()  # rung ends (sample counts), increasing, each in (n_screen, n_samples)
    margins: tuple = ()  # fitness margin of each rung
    cost_bound: float | None = None
    fitness: str = "spearman"
    truth: tuple = ()
    size: tuple | None = None
    seed: int = 0
    audit: bool = False

    def estimate(self, scores) -> float:
        """The oriented fitness of ``scores`` (a prefix of the samples) against the same prefix of the truth."""
        from evoproxy.fitness import oriented_fitness

        n = len(scores)
        size = None if self.size is None else np.asarray(self.size[:n], dtype=float)
        return oriented_fitness(self.fitness, scores, np.asarray(self.truth[:n], dtype=float), size, self.seed)[0]


def rung_ends(n_samples: int, n_screen: int, fractions) -> tuple:
    """Rung ends (sample counts) of ``fractions`` of ``n_samples``: rounded, kept strictly between ``n_screen``
    and ``n_samples``, increasing, without repeats."""
    ends = []
    for f in fractions:
        r = int(round(float(f) * n_samples))
        if n_screen < r < n_samples and (not ends or r > ends[-1]):
            ends.append(r)
    return tuple(ends)


def race_one(tree, samples, plan: RacePlan, threshold: float, known) -> dict:
    """The outcome of one child (see the module docstring): ``{"reason", "message"}`` for a screening rejection;
    else ``"screen"`` (screening scores) and either ``"equivalent": True``, or ``"scores"`` (every sample: the
    child was not rejected early, or ``audit``), ``"estimates"`` ({rung end: estimate}) and, when rejected early,
    ``"early"`` (the rung end) — in which case ``"scores"`` is present only with ``audit``; a later range that
    fails gives ``"reason"`` (NaN, or an error of a sample outside screening). ``samples``: a
    :class:`evoproxy.searchdata.SearchSamples`."""
    from evoproxy.screening import score_range

    stats, stacked = samples.stats, samples.stacked
    head = score_range(tree, stats, 0, plan.n_screen, cost_bound=plan.cost_bound, stacked=stacked)
    if head.reason:
        return {"reason": head.reason, "message": head.message}
    out: dict = {"screen": head.scores}
    if screen_key(head.scores) in known:
        out["equivalent"] = True
        return out
    scores = list(head.scores)
    estimates = {}
    out["estimates"] = estimates
    for end, margin in zip(plan.rungs, plan.margins):
        part = score_range(tree, stats, len(scores), end, check_constant=False, stacked=stacked)
        if part.reason:
            return {**out, "reason": part.reason, "message": part.message}
        scores += part.scores
        est = plan.estimate(scores)
        estimates[end] = est
        if "early" not in out and threshold > NO_THRESHOLD and not est >= threshold - margin:  # NaN: below
            out["early"] = end
            if not plan.audit:
                return out
    if len(scores) < plan.n_samples:
        rest = score_range(tree, stats, len(scores), plan.n_samples, check_constant=False, stacked=stacked)
        if rest.reason:
            return {**out, "reason": rest.reason, "message": rest.message}
        scores += rest.scores
    out["scores"] = scores
    return out


def _race_chunk(samples, items, plan: RacePlan, known):
    from evoproxy.tree import parse_tree
    from primitives.core import fixed_threads

    with fixed_threads(1):
        return [race_one(parse_tree(t), samples, plan, threshold, known) for t, threshold in items]


def race_many(samples, trees, thresholds, plan: RacePlan, known=frozenset(), jobs: int = 1) -> list[dict]:
    """:func:`race_one` for every tree (with its threshold) on ``samples``, in order; chunks in worker processes
    when ``jobs`` > 1 (each builds its own samples once, :meth:`evoproxy.searchdata.SearchSamples.setup`)."""
    items = [(t.to_json(), float(th)) for t, th in zip(trees, thresholds)]
    if not items:
        return []
    known = frozenset(known)
    if jobs <= 1 or len(items) < 2:
        return _race_chunk(samples, items, plan, known)
    from mqbench.parallel import map_items

    n_chunks = min(len(items), jobs * 4)
    bounds = np.linspace(0, len(items), n_chunks + 1).astype(int)
    chunks = [items[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    parts = map_items(_race_chunk, chunks, (), (plan, known), jobs=jobs, progress=False, setup=samples.setup())
    return [o for part in parts for o in part]


def decide(search, trees, counts: dict, thresholds=None) -> list[dict]:
    """The outcome (memo entry) of each of a search's candidate ``trees``, in order, updating ``counts`` and the
    search's memo, screening memo and audit rows (``search``: an :class:`evoproxy.evolution.Search`). ``thresholds``:
    per tree, the fitness it must be able to reach (multi-fidelity rejects a child early below it; None: none).
    Candidates already in the memo are not scored again; the others are raced (:func:`race_many`, screening
    first), or with screening off scored on every sample."""
    from evoproxy.fitness import oriented_fitness
    from evoproxy.screening import LOG_NAME, _is_constant, score_many
    from evoproxy.tree import canonical

    c = search.config
    thresholds = [NO_THRESHOLD if t is None else t for t in (thresholds or [None] * len(trees))]
    keys = [canonical(t) for t in trees]
    todo: dict[str, tuple] = {}
    for k, t, th in zip(keys, trees, thresholds):
        if k in search.memo and not _stale(search.memo[k], th):
            counts["cache_hits"] += 1
        elif k not in todo:
            todo[k] = (t, th)
        else:  # the same formula from two islands: raced against the lower threshold
            todo[k] = (t, min(th, todo[k][1]))
    names = list(todo)
    counts["evaluated"] += len(trees)

    def finish(k, scores):
        fit, orient = oriented_fitness(c.fitness, scores, search.truth, search.size, c.seed)
        if not math.isfinite(fit):
            search.memo[k] = {"reason": "nan"}
        else:
            search.memo[k] = {"fitness": fit, "orientation": orient, "scores": [float(s) for s in scores]}

    if c.screening:
        # equivalent candidates known before this call (an early rejection is not passed on: it depends on the
        # threshold, so such a child is raced and inherits the rejection below only at a threshold as high)
        known = {sk for sk, v in search.screen_memo.items() if v in search.memo}
        raced = race_many(search.samples, [todo[k][0] for k in names], [todo[k][1] for k in names], search.race_plan,
                          {sk for sk in known if search.memo[search.screen_memo[sk]].get("reason") != "early"}, c.jobs)
        for k, r in zip(names, raced):
            if "screen" not in r:  # rejected by screening
                search.memo[k] = {"reason": r["reason"]}
                continue
            skey = screen_key(r["screen"])
            if skey in known and not _stale(search.memo[search.screen_memo[skey]], todo[k][1]):
                search.memo[k] = dict(search.memo[search.screen_memo[skey]])
                counts["equivalent_hits"] += 1
                continue
            search.screen_memo[skey] = k
            scores = np.asarray(r["scores"], dtype=float) if "scores" in r else None
            if "early" in r:  # decided on a prefix (with audit, what the later samples gave is only recorded)
                search.memo[k] = {"reason": "early", "rung": r["early"], "estimate": r["estimates"][r["early"]],
                                  "threshold": todo[k][1]}
                counts["early_rejected"] += 1
            elif r.get("reason"):
                search.memo[k] = {"reason": r["reason"]}
                continue
            elif _is_constant(scores):
                search.memo[k] = {"reason": "constant"}
                continue
            else:
                finish(k, scores)
                counts["full_fidelity"] += 1
            _note_child(search, k, todo[k][1], r, None if r.get("reason") else scores)
    else:
        full = score_many(search.samples, [todo[k][0] for k in names], 0, None, c.jobs, None)
        for k, s in zip(names, full):
            if s.reason:
                search.memo[k] = {"reason": s.reason}
            else:
                finish(k, np.asarray(s.scores, dtype=float))
    outcomes = [search.memo[k] for k in keys]
    for o in outcomes:
        if "reason" in o:
            if o["reason"] == "early":
                continue  # counted above when decided (a memo hit is counted in cache_hits)
            key = f"rejected_{LOG_NAME.get(o['reason'], o['reason'])}"  # the cost bound: rejected_cost
            counts[key] = counts.get(key, 0) + 1
        else:
            counts["valid"] += 1
    return outcomes


def _stale(outcome: dict, threshold: float) -> bool:
    """Whether a remembered early rejection does not hold at ``threshold`` (it was decided against a higher one)."""
    return outcome.get("reason") == "early" and threshold < outcome.get("threshold", -math.inf)


def _note_child(search, key: str, threshold: float, raced: dict, scores) -> None:
    """One row of ``children.csv`` (with ``audit``): a child that passed screening, its threshold, its estimates
    at the rungs, its full-fidelity fitness (when scored on every sample) and the decision."""
    if not search.config.audit:
        return
    from evoproxy.fitness import oriented_fitness

    full = search.memo[key].get("fitness", math.nan)  # scored on every sample: the fitness already computed
    if scores is not None and "early" in raced:  # audited early rejection: what full fidelity gives
        full = oriented_fitness(search.config.fitness, scores, search.truth, search.size, search.config.seed)[0]
    row = {"generation": search.generation + 1, "key": key, "threshold": threshold, "full_fitness": full,
           "decision": "early" if "early" in raced else "full",
           "early_rung": raced.get("early", "")}
    for end in search.race_plan.rungs:
        row[f"fitness_at_{end}"] = raced["estimates"].get(end, math.nan)
    search.children.append(row)
