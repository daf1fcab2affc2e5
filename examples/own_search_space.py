"""Your own search space from Python: fit a proxy to networks you trained, compare it on the held-out ones.

    EVOPROXY_DATA=/path/to/data python examples/own_search_space.py            # the full run (see docs/python.md)
    EVOPROXY_SMOKE=1 EVOPROXY_DATA=... python examples/own_search_space.py     # 6 networks, 1 epoch: a check

The space is not a built-in one: a small CNN of ``depth`` conv blocks of ``width`` channels and kernel
``kernel``, 60 random variants. Each is initialised with ``torch.manual_seed(i)``, a copy is trained here for
a few epochs on a CIFAR-10 subset and tested on a test subset (the accuracies), and the *initialised*
networks (factory + descriptions) go to ``evoproxy.ProxySearch``: a zero-cost proxy scores untrained
networks. 45 are searched on, 15 held out; the discovered proxy and synflow / zico / params are
correlated with the accuracies of the 15. The benchmark is also saved as a spec the CLI reads.
"""
from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

SMOKE = os.environ.get("EVOPROXY_SMOKE") == "1"
N_MODELS, EPOCHS, N_TRAIN, N_TEST = (6, 1, 256, 128) if SMOKE else (60, 3, 2000, 1000)
SEARCH = dict(population=4, generations=1, time_budget=None) if SMOKE else dict(population=24, generations=12,
                                                                                time_budget=None)
HOLDOUT = 0.25  # 15 of 60


def make_cnn(desc: dict) -> nn.Module:
    """The factory: a description {"width", "depth", "kernel"} -> a network (the search space)."""
    layers, c = [], 3
    for d in range(desc["depth"]):  # the first block has stride 2 (16x16): cheap enough to train 60 on 2 cores
        layers += [nn.Conv2d(c, desc["width"], desc["kernel"], stride=2 if d == 0 else 1,
                             padding=desc["kernel"] // 2, bias=False),
                   nn.BatchNorm2d(desc["width"]), nn.ReLU()]
        c = desc["width"]
        if d % 2 == 1:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def descriptions(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"width": int(rng.choice([8, 16, 24, 32])), "depth": int(rng.integers(1, 5)),
             "kernel": int(rng.choice([3, 5]))} for _ in range(n)]


def train_and_test(net: nn.Module, x, y, xt, yt, epochs: int, seed: int) -> float:
    """Plain SGD with momentum, batch 128; test top-1 in percent."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for s in range(0, len(y), 128):
            idx = order[s: s + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        correct = sum(int((net(xt[s: s + 500]).argmax(1) == yt[s: s + 500]).sum()) for s in range(0, len(yt), 500))
    return 100.0 * correct / len(yt)


def main() -> None:
    import evoproxy
    from mqbench.data.cifar10 import sample_batch
    from mqbench.data.datasets import load_batch

    t_start = time.perf_counter()
    out = Path(os.environ.get("EVOPROXY_EXAMPLE_OUT") or tempfile.mkdtemp(prefix="own-space-"))
    x, y = load_batch("cifar10", "train", N_TRAIN, seed=1)      # the training subset
    xt, yt = load_batch("cifar10", "test", N_TEST, seed=0)      # the test subset
    descs = descriptions(N_MODELS)
    t0, accuracies = time.perf_counter(), []
    for i, d in enumerate(descs):
        torch.manual_seed(i)  # the initialisation fit() rebuilds: init_seeds default to the position
        accuracies.append(train_and_test(make_cnn(d), x, y, xt, yt, EPOCHS, seed=i))
        print(f"trained {i + 1}/{N_MODELS} {d}: top-1 {accuracies[-1]:.2f}%", file=sys.stderr, flush=True)
    t_train = time.perf_counter() - t0

    inputs, targets = sample_batch("train", 64, seed=0)    # the proxies' batch
    t0 = time.perf_counter()
    est = evoproxy.ProxySearch(seed=0, holdout=HOLDOUT, out=out / "run", progress=False, **SEARCH)
    est.fit(make_cnn, descs, accuracies, inputs=inputs, targets=targets)
    t_fit = time.perf_counter() - t0
    evaluation = est.score_holdout([est.best_, "synflow", "zico", "params"], progress=False)
    spec = evoproxy.Benchmark.from_models(make_cnn, descs, accuracies, inputs=inputs, targets=targets,
                                          name="own-cnn").save(out / "benchmark", search_fraction=0.75)

    print(f"search space: {N_MODELS} CNN variants, trained {EPOCHS} epoch(s) on {N_TRAIN} CIFAR-10 images, tested on "
          f"{N_TEST}: {t_train:.0f} s; accuracies {min(accuracies):.1f}..{max(accuracies):.1f}%")
    print(f"fit on {len(est.train_indices_)}, held out {len(est.holdout_indices_)}: {t_fit:.0f} s "
          f"({SEARCH['population']} x {SEARCH['generations'] + 1} generations)")
    print(est.equations_)
    print(f"holdout Spearman ({len(est.holdout_indices_)} networks):")
    for label, report in evaluation.reports.items():
        name = "evolved" if label == next(iter(evaluation.reports)) else label
        print(f"  {name:<8} {report['spearman']:+.3f}")
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(f"wall time {time.perf_counter() - t_start:.0f} s, peak RSS {rss / 1024:.0f} MB")
    print(f"saved for the CLI: evoproxy search --bench {spec} --out runs/own")
    print(f"evolved proxy: {est.best_.formula}  (run folder {est.result_.out}; export: {est.export(out / 'proxy.py')})")


if __name__ == "__main__":
    main()
