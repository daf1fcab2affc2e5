"""The settings of a search, one dataclass that the library, the Python API and the CLI share.

Every field carries its help text (``metadata["help"]``); :func:`add_arguments` derives the command-line
options from the fields, so a setting added here is reachable from ``evoproxy search`` without touching
the CLI (``tests/test_cli.py`` checks that every field has an option).
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from mqbench.errors import ConfigError
from mqbench.parallel import BACKENDS

# settings that do not change the result; everything else must match on --resume
RUNTIME_KEYS = ("out", "jobs", "backend", "scheduler", "time_budget", "progress", "checkpoint")
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
    population: int = _opt(32, "candidates per generation")
    generations: int = _opt(20, "generations after the initial population")
    seed: int = _opt(0, "seed of the search samples and of the evolution")
    structure: str = _opt("emq", "emq: EMQ's two-branch template; tree: free typed GP trees", choices=("emq", "tree"))
    fitness: str = _opt("spearman", "fitness of a candidate on the search samples", choices="fitness")
    table: str | None = _opt(None, "benchmark table (default: the benchmark's own)")
    gt_column: str | None = _opt(None, "ground-truth column (NAS-Bench-201: CIFAR10/CIFAR100/ImageNet...)")
    batch: int = _opt(64, "CIFAR-10 training images in the batch")
    hutchinson_probes: int | None = _opt(None, "Hessian probes (default: the benchmark's, 0 on NAS-Bench-201: no "
                                               "Hessian terminals; 8 on MQ tables)")
    noise_std: float = _opt(0.01, "std of the perturbation of the @perturb primitives (EZNAS)")
    terminals: list | None = _opt(None, "comma-separated primitive names (default: all the benchmark offers)", parse=_names)
    weights: dict = _opt({}, "sampling weights, e.g. 'log=2,matmul=0' (0 removes an op/terminal)", parse=_weights)
    screening: bool = _opt(True, "ablation: no compatibility screening", flag="--no-screening")
    diversity: bool = _opt(True, "ablation: plain tournament, duplicates allowed", flag="--no-diversity")
    novelty_weight: float = _opt(0.2, "weight of 1 - |rho to the elite| in diversity-prompting selection")
    tournament: int = _opt(3, "tournament size")
    elites: int = _opt(2, "best candidates kept unchanged each generation")
    cx_prob: float = _opt(0.5, "crossover probability of a pair of parents")
    mut_prob: float = _opt(0.8, "mutation probability of each child")
    screen_samples: int = _opt(8, "search samples a candidate is screened on before the rest")
    screen_time: float = _opt(10.0, "screening time-out per candidate (s)")
    max_depth: int = _opt(8, "tree structure: depth limit")
    max_size: int = _opt(30, "tree structure: node-count limit")
    max_chain: int = _opt(2, "emq structure: at most this many unary ops per branch")
    jobs: int = _opt(1, "worker processes (the run does not depend on it)")
    backend: str = _opt("loky", "engine of the worker processes: loky (this machine) or dask (a local Dask cluster "
                                "of --jobs workers, or the cluster at --scheduler); the run does not depend on it",
                        choices=BACKENDS)
    scheduler: str | None = _opt(None, "address of a running Dask scheduler (e.g. tcp://host:8786) to run on; "
                                       "needs --backend dask, and --jobs about its worker count")
    time_budget: float | None = _opt(None, "stop after the generation that would exceed this many seconds")
    progress: bool = _opt(True, "no progress bar", flag="--quiet")
    checkpoint: str | None = _opt(None, "MQ tables: FP checkpoint file (default: found by name in the data root; "
                                        "verified by sha256)")
    device: str = _opt("cpu", "where the search samples' statistics are extracted: cpu (bit-deterministic), cuda "
                              "(or cuda:N) or auto (cuda when available); not a runtime key: CUDA statistics differ "
                              "from CPU ones at the float32-rounding level", metavar="{cpu,cuda,auto}")

    def validate(self) -> None:
        from evoproxy.fitness import check_fitness
        from mqbench.parallel import check_backend

        if not self.bench:
            raise ConfigError("a search needs a benchmark (--bench)")
        if not self.out:
            raise ConfigError("a search needs a run folder (--out)")
        ints = {"samples": 4, "population": 4, "generations": 0, "batch": 2, "tournament": 1, "elites": 0,
                "screen_samples": 2, "jobs": 1, "max_depth": 4, "max_size": 4, "max_chain": 0}
        for key, low in ints.items():
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"--{key.replace('_', '-')} must be an integer >= {low}, got {v!r}")
        if self.elites >= self.population:
            raise ConfigError("--elites must be smaller than --population")
        for key in ("cx_prob", "mut_prob"):
            v = getattr(self, key)
            if not 0 <= v <= 1:
                raise ConfigError(f"--{key.replace('_', '-')} must be in [0, 1], got {v}")
        if self.novelty_weight < 0:
            raise ConfigError("--novelty-weight must be >= 0")
        if self.screen_time <= 0:
            raise ConfigError("--screen-time must be > 0 seconds")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ConfigError("--time-budget must be > 0 seconds")
        if self.hutchinson_probes is not None and self.hutchinson_probes < 0:
            raise ConfigError("--hutchinson-probes must be >= 0")
        check_fitness(self.fitness)
        check_backend(self.backend, self.scheduler)
        from mqbench.devices import resolve_device

        if resolve_device(self.device) != "cpu":  # one line for an unknown device or CUDA without a GPU
            # the search's statistics come from DataRecipe.for_bench in evoproxy/evolution.py, which does not
            # pass device= yet: refuse rather than extract on the CPU under a "cuda" label
            raise ConfigError("search --device cuda is not wired into the search yet (evaluate, baselines and "
                              "bench build take it); use --device cpu")

    def result_settings(self) -> dict:
        """The settings a resumed run must share. ``device`` enters as its kind (``cuda``) and only when it is
        not the CPU (``auto`` on a machine without GPU counts as cpu), so runs made before devices existed
        resume unchanged."""
        from mqbench.devices import device_tag

        settings = {k: v for k, v in self.portable().items() if k not in RUNTIME_KEYS}
        tag = device_tag(settings.pop("device", None))
        if tag is not None:
            settings["device"] = tag
        return settings

    def portable(self) -> dict:
        """The settings as stored in run folders: paths relative to the repository or the data root."""
        from mqbench.dataroot import portable_path

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
    from evoproxy.fitness import fitness_names

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
