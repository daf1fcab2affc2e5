"""Results as objects: a search run folder and an evaluation, for notebooks and scripts.

    result = SearchResult.load("runs/a")       # or what evoproxy.search(...) returns
    result.best, result.hall_of_fame           # Proxy objects (best first)
    result.log[-1]["best_fitness"]             # one dict per generation (log.csv)
    result.export("my_proxy.py"); result.plot("progress.png")

    evaluation = Evaluation(reports, items)    # what evoproxy.evaluate(...) returns: a report per proxy
    evaluation.to_markdown(); evaluation.to_csv("t.csv"); evaluation.plot("scatter.png")
    evaluation["hawq_v1"]["spearman"]
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mqbench.errors import ConfigError


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path.parent} is not a search run folder: {path.name} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


@dataclass
class SearchResult:
    """A finished (or stopped) search: its folder, settings, best proxy, hall of fame and log."""

    out: Path
    config: dict
    best: object  # evoproxy.language.tree.Proxy
    hall_of_fame: list = field(default_factory=list)  # Proxy objects, best first
    log: list = field(default_factory=list)  # one dict per generation
    stopped: str | None = None

    @classmethod
    def load(cls, run_dir: str | Path, stopped: str | None = None) -> "SearchResult":
        """Read a run folder written by the search (``best.json``, ``hall_of_fame.json``, ``log.csv``, ``config.json``)."""
        from evoproxy.language.tree import load_proxy, parse_proxy

        out = Path(run_dir)
        config = _read_json(out / "config.json")
        best = load_proxy(out / "best.json")
        hof = []
        for entry in _read_json(out / "hall_of_fame.json"):
            doc = {**best.to_json(), "tree": entry["tree"], "orientation": entry["orientation"],
                   "search": {**best.search, "fitness_value": entry["fitness"], "generation_found": entry["generation"]}}
            doc.pop("formula", None)
            try:
                hof.append(parse_proxy(doc, f"{out / 'hall_of_fame.json'} rank {entry.get('rank')}"))
            except ConfigError:  # e.g. a Hessian terminal with other settings: keep what parses
                continue
        log = []
        if (out / "log.csv").exists():  # old logs' columns under their current names (rejected_timeout -> _cost)
            from evoproxy.evolution.runfiles import read_log

            log = [{k: _number(v) for k, v in row.items()} for row in read_log(out / "log.csv")]
        return cls(out, config, best, hof, log, stopped)

    @property
    def generations_done(self) -> int:
        return int(self.log[-1]["generation"]) if self.log else -1

    def equations(self) -> list[dict]:
        """The hall of fame as rows: rank, formula, search fitness, generation found, tree size."""
        return [{"rank": r + 1, "formula": p.formula, "fitness": p.search.get("fitness_value"),
                 "generation": p.search.get("generation_found"), "size": p.tree.size()}
                for r, p in enumerate(self.hall_of_fame)]

    def export(self, path: str | Path, which: int | None = None) -> Path:
        """Write the run's answer (``best.json``; with ``--validation`` the member chosen on the validation items),
        or hall-of-fame entry ``which`` (0 = the best search fitness), as a standalone torch-only module."""
        from evoproxy.export import export_source

        path = Path(path)
        proxy = self.best if which is None or not self.hall_of_fame else self.hall_of_fame[which]
        path.write_text(export_source(proxy, path.stem if path.stem.isidentifier() else "proxy"))
        return path

    def plot(self, path: str | Path | None = None) -> Path:
        """Best and median fitness per generation (default ``<run>/progress.png``)."""
        from evoproxy.plot import run_progress

        return run_progress(self.out, path)

    def __repr__(self) -> str:
        s = self.best.search
        lines = [f"SearchResult({self.out}: {self.config.get('bench')}, seed {self.config.get('seed')}, "
                 f"{self.generations_done + 1} generations{', ' + self.stopped if self.stopped else ''})",
                 f"  best: {self.best.formula}  ({s.get('fitness')} {s.get('fitness_value', float('nan')):.4f} "
                 f"on {s.get('samples')} search samples)"]
        lines += [f"  {e['rank']:>2}. {e['fitness']:.4f}  {e['formula']}" for e in self.equations()[:5]]
        return "\n".join(lines)


@dataclass
class Evaluation:
    """Reports of several proxies on one benchmark sample, with the per-item scores kept."""

    reports: dict  # label -> report (see evoproxy.scoring.evaluation)
    items: dict  # ids, truth, size, results

    def __getitem__(self, label: str) -> dict:
        return self.reports[label]

    @property
    def rows(self) -> list[dict]:
        from evoproxy.scoring.evaluation import SUMMARY_KEYS

        return [{"proxy": label, **{k: r[k] for k in SUMMARY_KEYS}} for label, r in self.reports.items()]

    def scores(self, label: str) -> np.ndarray:
        return np.array([r["scores"][label] for r in self.items["results"]], dtype=float)

    @property
    def truth(self) -> np.ndarray:
        return np.asarray(self.items["truth"], dtype=float)

    def to_csv(self, path: str | Path) -> Path:
        from evoproxy.scoring.evaluation import write_csv

        return write_csv(self.reports, path)

    def to_markdown(self) -> str:
        from evoproxy.scoring.evaluation import markdown

        return markdown(self.reports, title="Evaluation")

    def plot(self, path: str | Path, proxies=None) -> Path:
        """Score vs ground truth, one panel per proxy."""
        from evoproxy.plot import scatter

        first = next(iter(self.reports.values()))
        labels = list(proxies or self.reports)
        return scatter({k: self.scores(k) for k in labels}, self.truth, path,
                       truth_label=f"ground truth ({first['gt_column']})", title=f"proxies on {first['bench']}",
                       caption=f"{first['split']} split, sample seed {first['seed']}, batch {first['batch']}.")

    def __repr__(self) -> str:
        from evoproxy.scoring.evaluation import caption, human_report

        return caption(self.reports) + "\n" + human_report(self.reports)
