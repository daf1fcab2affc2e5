"""The settings of a search, one dataclass that the library, the Python API and the CLI share.

Every field carries its help text (``metadata["help"]``); :func:`add_arguments` derives the command-line
options from the fields, so a setting added here is reachable from ``evoproxy search`` without touching
the CLI (``tests/test_cli.py`` checks that every field has an option).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import InitVar, dataclass, field

from mqbench.errors import ConfigError
from mqbench.parallel import BACKENDS

# settings that do not change the result; everything else must match on --resume
RUNTIME_KEYS = ("out", "jobs", "backend", "scheduler", "time_budget", "progress", "checkpoint", "audit")
# retired settings: no longer options or fields, still accepted (and ignored) by SearchConfig(...) so that old
# settings and the config.json files that carry them load (screen_time: the former wall-clock screening time-out)
RETIRED_KEYS = ("screen_time",)
# settings added after runs were committed: left out of result_settings() at their default (the behaviour of
# those runs), so committed config.json files and older checkpoints still match a run of the same settings
# Default --screen-cost (tensor elements on the screening samples): far above every candidate of the committed
# runs, none of which ever rejected one on the former 10 s time-out (every rejected_timeout, now rejected_cost, of results/ is 0).
SCREEN_COST = 2e10
# Multi-fidelity (evoproxy.evolution.racing): rung ends as fractions of the search samples and the fitness margin of each, one
# setting for both benchmarks, chosen from the children of audited runs (results/racing/joint.md: the least work with
# an early-reject error <= 1% on NB201 seed 0 and MQ seed 0; replayed on NB201 seed 2 and MQ seed 1: 0 of 248 and
# 0 of 627 early rejections wrong, 78% and 65% of the full-fidelity work for children that pass screening)
RUNGS = [0.2, 0.3, 0.5]
MARGINS = [0.5, 0.25, 0.15]
# the quantile of the parents' fitness a child must reach: in the audited NB201 run (seed 0, generations 1-9), 6% of
# the children that passed screening were below the parents' worst, 59% below their median
ENTRY_QUANTILE = 0.5
LATER_KEYS = {"screen_cost": SCREEN_COST, "islands": 1, "migration_interval": 5, "migrants": 2, "restart_after": 0,
              "multi_fidelity": False, "sampling": "random", "validation": 0.0, "patience": 0, "distinct_rankings": False}
DEFAULT_POPULATION, DEFAULT_GENERATIONS = 32, 20  # without --time-budget; with it, unset sizes are measured
PATH_KEYS = ("out", "table", "checkpoint")  # stored portably (repository- or data-root-relative)


def _opt(default, help: str, **cli):
    """A field with its help text and, in ``cli``, how the command line spells it (flag, negative flag, parse)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


def _weights(text: str) -> dict:
    out = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--weights entries must look like name=number, got {part.strip()!r}") from None
    return out


def _names(text: str) -> list:
    return [t.strip() for t in text.split(",") if t.strip()]


@dataclass
class SearchConfig:
    bench: str = _opt(None, "benchmark name (nb201-cifar10, mq-resnet20-cifar10, ...) or a spec file (*.toml, "
                                   "see examples/benchmarks/)", required=True)
    out: str | None = _opt(None, "run folder (config.json, log.csv, hall_of_fame.json, best.json, checkpoint.json)",
                           required=True)
    samples: int = _opt(64, "search-split items scored per candidate")
    sampling: str = _opt("random", "how the search samples are drawn from the search split: random (a seeded "
                                 "permutation) or stratified (one per ground-truth stratum; evoproxy.evolution.searchsample)",
                       choices=("random", "stratified"))
    validation: float = _opt(0.0, "extra search-split items, as a fraction of --samples, never used by the fitness: "
                                  "best.json is the hall-of-fame member with the best fitness on them (0: the best "
                                  "fitness)")
    population: int | None = _opt(None, f"candidates per generation and island (default {DEFAULT_POPULATION}; with "
                                        "--time-budget: sized from a measured scoring rate)")
    generations: int | None = _opt(None, f"generations after the initial population (default {DEFAULT_GENERATIONS}; "
                                         "with --time-budget: sized from a measured scoring rate)")
    seed: int = _opt(0, "seed of the search samples and of the evolution")
    structure: str = _opt("emq", "emq: EMQ's two-branch template; tree: free typed GP trees", choices=("emq", "tree"))
    fitness: str = _opt("spearman", "fitness of a candidate on the search samples", choices="fitness")
    table: str | None = _opt(None, "benchmark table (default: the benchmark's own)")
    gt_column: str | None = _opt(None, "ground-truth column (NAS-Bench-201: CIFAR10/CIFAR100/ImageNet...)")
    batch: int = _opt(64, "CIFAR-10 training images in the batch")
    hutchinson_probes: int | None = _opt(None, "Hessian probes (default: the benchmark's, 0 on NAS-Bench-201: no "
                                               "Hessian terminals; 8 on MQ tables)")
    noise_std: float = _opt(0.01, "std of the perturbation of the @perturb statistics (EZNAS)")
    terminals: list | None = _opt(None, "comma-separated statistic names (default: all the benchmark offers)", parse=_names)
    weights: dict = _opt({}, "sampling weights, e.g. 'log=2,matmul=0' (0 removes an op/terminal)", parse=_weights)
    screening: bool = _opt(True, "ablation: no compatibility screening", flag="--no-screening")
    diversity: bool = _opt(True, "ablation: plain tournament, duplicates allowed", flag="--no-diversity")
    distinct_rankings: bool = _opt(False, "with diversity: also refuse a child that ranks the search samples exactly "
                                          "like a member (e.g. a monotone transform of it)", flag="--distinct-rankings")
    novelty_weight: float = _opt(0.2, "weight of 1 - |rho to the elite| in diversity-prompting selection")
    tournament: int = _opt(3, "tournament size")
    elites: int = _opt(2, "best candidates kept unchanged each generation")
    cx_prob: float = _opt(0.5, "crossover probability of a pair of parents")
    mut_prob: float = _opt(0.8, "mutation probability of each child")
    screen_samples: int = _opt(8, "search samples a candidate is screened on before the rest")
    screen_cost: float = _opt(SCREEN_COST, "screening cost bound: a candidate whose screening samples need more tensor "
                                    "elements processed is rejected (deterministic; see evoproxy.evolution.screening)")
    multi_fidelity: bool = _opt(True, "ablation: score every child on every search sample (no early rejection of "
                                      "children far below the population; see evoproxy.evolution.racing)",
                                flag="--no-multi-fidelity")
    entry_quantile: float = _opt(ENTRY_QUANTILE, "multi-fidelity: a child enters the next population only if its fitness "
                                                 "reaches this quantile of its parents' population (0: the worst, "
                                                 "0.5: the median)")
    rungs: list = _opt(RUNGS, "multi-fidelity: where a child is judged, as fractions of the search samples "
                              "(e.g. '0.25,0.5')", parse=lambda text: [float(v) for v in _names(text)])
    margins: list = _opt(MARGINS, "multi-fidelity: a child whose fitness at a rung is below the parent population's "
                                  "worst minus this margin is rejected early (one per rung)",
                         parse=lambda text: [float(v) for v in _names(text)])
    audit: bool = _opt(False, "score children rejected early on every sample too (decisions unchanged, slower) and "
                              "write children.csv: each child's fitness at every rung and at full fidelity",
                       flag="--audit")
    patience: int = _opt(0, "stop when the best fitness has not improved for this many generations (0: never; "
                            "the log says so)")
    islands: int = _opt(1, "populations evolved side by side (1: one population)")
    migration_interval: int = _opt(5, "islands: every this many generations the best of each island migrate")
    migrants: int = _opt(2, "islands: best candidates of an island copied to the next one (a ring), replacing its worst")
    restart_after: int = _opt(0, "an island whose best fitness has not improved for this many generations restarts "
                                 "from random trees (0: never)")
    max_depth: int = _opt(8, "tree structure: depth limit")
    max_size: int = _opt(30, "tree structure: node-count limit")
    max_chain: int = _opt(2, "emq structure: at most this many unary ops per branch")
    jobs: int = _opt(1, "worker processes (the run does not depend on it)")
    backend: str = _opt("loky", "engine of the worker processes: loky (this machine) or dask (a local Dask cluster "
                                "of --jobs workers, or the cluster at --scheduler); the run does not depend on it",
                        choices=BACKENDS)
    scheduler: str | None = _opt(None, "address of a running Dask scheduler (e.g. tcp://host:8786) to run on; "
                                       "needs --backend dask, and --jobs about its worker count")
    time_budget: float | None = _opt(None, "seconds of searching (the only wall-clock setting; loading the statistics "
                                           "comes first, uncounted): stop after "
                                           "the generation that would exceed it; unset --population/--generations are "
                                           "sized to fit it from a measured scoring rate (evoproxy.evolution.budget)")
    progress: bool = _opt(True, "no progress bar", flag="--quiet")
    checkpoint: str | None = _opt(None, "MQ tables: FP checkpoint file (default: found by name in the data root; "
                                        "verified by sha256)")
    device: str = _opt("cpu", "where the search samples' statistics are extracted: cpu (bit-deterministic), cuda "
                              "(or cuda:N) or auto (cuda when available); not a runtime key: CUDA statistics differ "
                              "from CPU ones at the float32-rounding level", metavar="{cpu,cuda,auto}")
    screen_time: InitVar[float | None] = None  # RETIRED_KEYS: accepted, ignored, not stored

    def __post_init__(self, screen_time) -> None:
        """Nothing to set up: ``screen_time`` (a retired setting) is dropped here."""

    def validate(self) -> None:
        from evoproxy.evolution.fitness import check_fitness
        from mqbench.parallel import check_backend

        if not self.bench:
            raise ConfigError("a search needs a benchmark (--bench)")
        if not self.out:
            raise ConfigError("a search needs a run folder (--out)")
        ints = {"samples": 4, "population": 4, "generations": 0, "batch": 2, "tournament": 1, "elites": 0,
                "screen_samples": 2, "jobs": 1, "max_depth": 4, "max_size": 4, "max_chain": 0, "islands": 1,
                "migration_interval": 1, "migrants": 0, "restart_after": 0, "patience": 0}
        for key, low in ints.items():
            v = getattr(self, key)
            if v is None and key in ("population", "generations"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"--{key.replace('_', '-')} must be an integer >= {low}, got {v!r}")
        if self.population is not None and self.elites >= self.population:
            raise ConfigError("--elites must be smaller than --population")
        if self.population is not None and self.islands > 1 and self.migrants >= self.population:
            raise ConfigError("--migrants must be smaller than --population")
        if len(self.margins) != len(self.rungs):
            raise ConfigError(f"--margins needs one margin per rung ({len(self.rungs)}), got {len(self.margins)}")
        if any(not 0 < f < 1 for f in self.rungs) or list(self.rungs) != sorted(set(self.rungs)):
            raise ConfigError(f"--rungs must be increasing fractions in (0, 1), got {self.rungs}")
        if not 0 <= self.entry_quantile <= 1:
            raise ConfigError(f"--entry-quantile must be in [0, 1], got {self.entry_quantile}")
        if any(not m >= 0 for m in self.margins):
            raise ConfigError(f"--margins must be >= 0, got {self.margins}")
        if not 0 <= self.validation <= 4:
            raise ConfigError(f"--validation must be a fraction of --samples in [0, 4], got {self.validation!r}")
        if self.sampling not in ("random", "stratified"):
            raise ConfigError(f"--sampling must be random or stratified, got {self.sampling!r}")
        if not self.screen_cost > 0:
            raise ConfigError(f"--screen-cost must be > 0 tensor elements, got {self.screen_cost!r}")
        for key in ("cx_prob", "mut_prob"):
            v = getattr(self, key)
            if not 0 <= v <= 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be in [0, 1], got {v}")
        if self.novelty_weight < 0:
            raise ConfigError("--novelty-weight must be >= 0")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError("--time-budget must be > 0 seconds")
        if self.hutchinson_probes is not None and self.hutchinson_probes < 0:
            raise ConfigError("--hutchinson-probes must be >= 0")
        if not 0 <= self.noise_std < float("inf"):  # also NaN: the search's proxy files would not load
            raise ConfigError(f"--noise-std must be a finite number >= 0, got {self.noise_std!r}")
        check_fitness(self.fitness)
        check_backend(self.backend, self.scheduler)
        from mqbench.devices import resolve_device

        resolve_device(self.device)  # one line for an unknown device or CUDA without a GPU

    def result_settings(self) -> dict:
        """The settings a resumed run must share. Settings added later enter only when not at their old
        default (``LATER_KEYS``); ``device`` enters as its kind (``cuda``) and only when it is not the CPU
        (``auto`` on a machine without GPU counts as cpu), so runs made before either existed resume unchanged."""
        from mqbench.devices import device_tag

        settings = {k: v for k, v in self.portable().items()
                    if k not in RUNTIME_KEYS and not (k in LATER_KEYS and v == LATER_KEYS[k])}
        if not (self.multi_fidelity and self.screening):  # the rungs and margins matter only to multi-fidelity
            settings.pop("multi_fidelity", None)  # without screening there is no multi-fidelity
            settings.pop("rungs", None)
            settings.pop("margins", None)
            settings.pop("entry_quantile", None)
        tag = device_tag(settings.pop("device", None))
        if tag is not None:
            settings["device"] = tag
        return settings

    def sized(self) -> "SearchConfig":
        """A copy with unset population/generations at their defaults (a run without --time-budget)."""
        return dataclasses.replace(self, population=DEFAULT_POPULATION if self.population is None else self.population,
                                   generations=DEFAULT_GENERATIONS if self.generations is None else self.generations)

    def portable(self) -> dict:
        """The settings as stored in run folders: paths relative to the repository or the data root."""
        from mqbench.data.dataroot import portable_path

        d = dataclasses.asdict(self)
        return {k: portable_path(v) if k in PATH_KEYS else v for k, v in d.items()}


def _type_of(f: dataclasses.Field):
    text = str(f.type)
    for name, kind in (("int", int), ("float", float), ("str", str)):
        if text.startswith(name):
            return kind
    return str


def add_arguments(parser: argparse.ArgumentParser, config_class=SearchConfig, only: tuple | None = None) -> None:
    """One option per field of ``config_class`` (or of the fields named in ``only``): ``--name-with-dashes`` (or
    the field's ``flag``), typed by the annotation, defaults and help from the field; booleans that default to
    True get a negative flag."""
    from evoproxy.evolution.fitness import fitness_names

    for f in dataclasses.fields(config_class):
        if only is not None and f.name not in only:
            continue
        meta = dict(f.metadata)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        kw = {"dest": f.name, "help": meta.get("help", "")}
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_false" if default else "store_true", **kw)
            continue
        kw["default"] = default
        kw["type"] = meta.get("parse", _type_of(f))
        choices = meta.get("choices")
        if choices == "fitness":
            choices = fitness_names()
        if choices:
            kw["choices"] = choices
        if meta.get("required"):
            kw["required"] = True
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        parser.add_argument(flag, **kw)


def from_arguments(args: argparse.Namespace, config_class=SearchConfig):
    """The config whose fields are the parsed options of :func:`add_arguments`."""
    return config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)})
