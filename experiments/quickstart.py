"""The README's Quickstart command, timed as a new user meets it: after the install, with an empty cache.

    python -m experiments.quickstart --repeat 2 [--seeds 1,2] [--jobs 2]

Reads the Quickstart's command from README.md (the code block under "## Quickstart"), drops the
``pip install`` steps (the install is not timed), and runs the rest with ``bash`` in a fresh temporary
folder with ``EVOPROXY_CACHE`` pointing at a new empty folder: ``--repeat`` times as written, then once
per ``--seeds`` value with the search's ``--seed`` set to it. Each run's wall time, printed formula and
printed holdout Spearman go to ``results/quickstart/runs.csv`` as soon as it finishes (a run already
there is skipped), and ``table.md`` says whether every repeat printed the same formula.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from experiments.common import REPO, log, results_dir, write_table

FIELDS = ["run", "seed", "wall_s", "formula", "holdout_spearman", "stopped", "returncode"]


def quickstart_command() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```\n(.*?)\n```", section, re.S).group(1).strip()
    steps = [s.strip() for s in block.split("&&")]
    return " && ".join(s for s in steps if not s.startswith("pip "))


def with_seed(command: str, seed: int) -> str:
    """The command with the search's ``--seed`` set to ``seed`` (added when absent)."""
    search, sep, rest = command.partition(" && evoproxy evaluate")
    search = re.sub(r" --seed \d+", "", search) + f" --seed {seed}"
    return search + sep + rest


def run_once(command: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
        env = {**os.environ, "EVOPROXY_CACHE": str(Path(tmp) / "cache")}
        t0 = time.perf_counter()
        done = subprocess.run(["bash", "-c", command], cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        out = done.stdout
        formula = re.search(r"^best: (.*)$", out, re.M)
        stopped = re.search(r"^stopped early: (.*)$", out, re.M)
        # evaluate's table: a header line starting with "proxy", then one row; spearman is the 2nd column
        lines = out.splitlines()
        rho = None
        for i, line in enumerate(lines[:-1]):
            if line.startswith("proxy") and "spearman" in line:
                rho = float(lines[i + 1].split()[1])
        if done.returncode != 0:
            log(done.stderr[-2000:])
        return {"wall_s": round(wall, 1), "formula": formula.group(1) if formula else "",
                "holdout_spearman": rho, "stopped": stopped.group(1) if stopped else "", "returncode": done.returncode}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.quickstart", description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seeds", default="1,2")
    args = p.parse_args(argv)
    out = results_dir("quickstart")
    runs_csv = out / "runs.csv"
    rows = list(csv.DictReader(open(runs_csv))) if runs_csv.exists() else []
    command = quickstart_command()
    plan = [(f"as written #{k + 1}", None) for k in range(args.repeat)]
    plan += [(f"--seed {s}", int(s)) for s in args.seeds.split(",") if s.strip()]
    for name, seed in plan:
        if any(r["run"] == name and r["command"] == command for r in rows):
            continue
        cmd = command if seed is None else with_seed(command, seed)
        log(f"quickstart {name}: {cmd}")
        row = {"run": name, "seed": "" if seed is None else seed, **run_once(cmd), "command": command}
        log(f"  {row['wall_s']} s, holdout {row['holdout_spearman']}, {row['formula']}")
        rows.append({k: str(v) for k, v in row.items()})
        with open(runs_csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS + ["command"])
            w.writeheader()
            w.writerows(rows)
    current = [r for r in rows if r["command"] == command]
    repeats = {r["formula"] for r in current if r["run"].startswith("as written")}
    caption = (f"The README's Quickstart after the install, empty cache (EVOPROXY_CACHE a new folder), one idle 2-core "
               f"machine, one run at a time: `{command}`. Holdout: 200 NAS-Bench-201 architectures (holdout split, "
               f"sample seed 1), ground truth CIFAR10TestAccuracy200Epochs. Same formula on every repeat: "
               f"{'yes' if len(repeats) == 1 else 'no'}.")
    write_table(out, "table", current, FIELDS, caption)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
