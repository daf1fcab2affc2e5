"""Learned per-layer-position weights for a proxy (``evoproxy calibrate``; ParZC-style weighting, issue 15).

    proxy = calibrate("runs/a/best.json", "mq-resnet20-cifar10", samples=50)   # search split only
    proxy.save("runs/a/calibrated.json")                                       # evaluate / allocate / export it

A proxy whose tree's root aggregates over layers (``layer_sum``, ``layer_mean``, ``layer_meanlog``,
``layer_pweighted``) is a sum of per-layer terms t_l (:func:`evoproxy.tree.layer_terms_on`: the
aggregation's share of layer l, from the search's evaluator). Calibration replaces that sum by sum_l w_p(l) t_l with one weight per
*layer position* p, the layer's name and weight shape (:func:`evoproxy.opkernels.layer_position`): on
NAS-Bench-201 the name gives cell x edge and the kernel size the operation (``cells.7.edges.3_1.1:16x16x3x3``
is a 3x3 conv on edge 1->3 of cell 7); on an MQ table every item has the same layers, so a position is a
layer index. The weights minimise

    1 - diff_kendall(z(orientation * sum_l w_p(l) t_l), truth, T) + weight_decay * mean_p (w_p - 1)^2

on the benchmark's *search* split (z: standardised over the items, so T is in units of the scores'
standard deviation), with Adam from w = 1 (the uncalibrated proxy); the decay pulls towards that proxy,
not towards 0 (which would change the proxy's form). A position absent from the search items keeps
weight ``default`` = 1 when scored. Torch on CPU, float64, a few seconds.

The weights are stored in the proxy file (``layer_weights``, parsed and validated by
:func:`evoproxy.tree.parse_layer_weights`; no pickle) with how they were fitted.
"""
from __future__ import annotations

import math
import statistics

from evoproxy.errors import ConfigError
from evoproxy.tree import LAYER_WEIGHTS_KEY as KEY  # opkernels.layer_position keys


def fit_weights(rows: list[tuple[list[str], list[float]]], truth, orientation: int = 1, *, weight_decay: float = 0.01,
                temperature: float = 0.1, steps: int = 300, lr: float = 0.05) -> tuple[dict, dict]:
    """({position: weight}, fit summary) from per-item (layer positions, layer terms) and the items' truth."""
    import torch

    from evoproxy.metrics import diff_kendall, kendall

    positions = sorted({name for names, _ in rows for name in names})
    index = {p: i for i, p in enumerate(positions)}
    terms = torch.zeros(len(rows), len(positions), dtype=torch.float64)
    for r, (names, values) in enumerate(rows):
        for name, t in zip(names, values):
            terms[r, index[name]] += float(t)
    y = torch.as_tensor([float(v) for v in truth], dtype=torch.float64)
    w = torch.ones(len(positions), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr)  # a step changes a column's contribution by the same fraction at any scale

    def score(weights):
        s = orientation * (terms @ weights)
        return (s - s.mean()) / (s.std() + 1e-12)

    for _ in range(int(steps)):
        opt.zero_grad()
        loss = 1 - diff_kendall(score(w), y, temperature) + weight_decay * (w - 1).pow(2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        before = kendall((orientation * terms.sum(dim=1)).numpy(), y.numpy())
        after = kendall(score(w).numpy(), y.numpy())
    summary = {"positions": len(positions), "search_kendall_before": before, "search_kendall_after": after,
               "weight_decay": weight_decay, "temperature": temperature, "steps": int(steps), "lr": lr}
    return {p: float(v) for p, v in zip(positions, w.detach())}, summary


def check_positions(rows) -> None:
    """ConfigError when the items' layer positions do not recur (nothing a weight per position could learn)."""
    counts: dict = {}
    for names, _ in rows:
        for name in set(names):
            counts[name] = counts.get(name, 0) + 1
    if len(rows) < 2 or statistics.median(counts.values()) < 2:
        raise ConfigError(f"the benchmark's items have no stable layer positions (median {statistics.median(counts.values()) if counts else 0:g} "
                          f"item(s) per layer position over {len(rows)} items): nothing to calibrate per position")


def calibrate(proxy, bench: str, samples: int = 50, seed: int = 0, *, batch: int = 64, weight_decay: float = 0.01,
              temperature: float = 0.1, steps: int = 300, table=None, gt_column_name=None, checkpoint=None,
              progress: bool = False):
    """A copy of ``proxy`` (a Proxy or a proxy file) with per-layer-position weights learned on ``samples`` items
    of ``bench``'s search split (sample ``seed``); see the module docstring."""
    from evoproxy.ops import OPS
    from evoproxy.tree import Proxy, load_proxy
    from mqbench.benchmarks import BenchRef
    from primitives.workspace import Workspace

    proxy = load_proxy(proxy) if not isinstance(proxy, Proxy) else proxy
    if OPS[proxy.tree.name].kind != "aggregate":
        raise ConfigError(f"{proxy.source or 'proxy'}: no per-layer structure to weight: the root {proxy.tree.name!r} "
                          f"is not an aggregation over layers (layer_sum, layer_mean, ...)")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ConfigError(f"--samples must be an integer >= 2, got {samples!r}")
    ref, b = BenchRef.resolve(bench, table, gt_column_name, checkpoint)
    b.verify()
    ids = b.sample(samples, seed, "search")
    truth = [float(v) for v in b.ground_truth(ids)]
    stats = Workspace(ref, b).statistics(ids, proxy.statistics_request(batch), progress=progress)
    out = calibrate_on(proxy, stats, truth, weight_decay=weight_decay, temperature=temperature, steps=steps)
    out.layer_weights["fit"].update({"bench": bench, "split": "search", "samples": len(ids), "seed": seed,
                                     "batch": batch})
    return out


def term_rows(proxy, stats) -> list:
    """(layer positions, layer terms) of ``proxy`` per item's ``NetworkStats`` (:func:`evoproxy.tree.layer_terms_on`,
    the terms a calibrated proxy's weights multiply when it is scored); None where a term fails or is not finite."""
    from evoproxy.opkernels import OpError
    from evoproxy.tree import layer_terms_on

    rows = []
    for st in stats:
        try:
            names, terms = layer_terms_on(proxy.tree, st)
        except (OpError, ArithmeticError):
            rows.append(None)
            continue
        terms = [float(t) for t in terms]
        rows.append((names, terms) if all(math.isfinite(t) for t in terms) else None)
    return rows


def calibrate_on(proxy, stats, truth, **fit_options):
    """:func:`calibrate` on already extracted statistics (one ``NetworkStats`` per item, with its truth), or on
    the items' :func:`term_rows` (a list of (positions, terms) or None); ``fit_options`` go to :func:`fit_weights`."""
    from dataclasses import replace

    rows = list(stats)
    if not all(r is None or isinstance(r, tuple) for r in rows):
        rows = term_rows(proxy, rows)
    kept = [(r, float(y)) for r, y in zip(rows, truth) if r is not None]
    check_positions([r for r, _ in kept])
    weights, summary = fit_weights([r for r, _ in kept], [y for _, y in kept], proxy.orientation, **fit_options)
    summary.update({"failed": len(rows) - len(kept), "objective": "1 - diff_kendall + weight_decay * mean (w - 1)^2"})
    return replace(proxy, layer_weights={"key": KEY, "weights": weights, "default": 1.0, "fit": summary})
