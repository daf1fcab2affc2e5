"""Seeded, class-balanced sampling of a labelled split, for any number of classes.

The draw is the one of :func:`mqbench.data.cifar10.sample_indices`, generalised: with ``k`` classes
present in the split, every class gets ``n // k`` items and the first ``n % k`` classes of a seeded
class order one more; each class's items come from a seeded permutation of its members; the
selection is then shuffled. For the ten CIFAR-10 classes it gives the same indices as
``cifar10.sample_indices`` (tested).

A :class:`SamplePlan` keeps each class's whole permutation, so that a member which turns out to be
unusable (a corrupt image file) can be replaced by the next member of the same permutation: the
result stays balanced, seeded and independent of how (or in how many processes) the files are read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mqbench.errors import ConfigError, DataError


@dataclass(frozen=True)
class SamplePlan:
    groups: tuple[int, ...]            # the class of each group (-1: one unbalanced group)
    perms: tuple[torch.Tensor, ...]    # per group: its members' indices in seeded order
    counts: tuple[int, ...]            # per group: how many to take
    order: torch.Tensor | None         # the final shuffle of the concatenated selection (None: keep)


def plan_sample(labels, n: int, seed: int, balanced: bool = True) -> SamplePlan:
    """The seeded draw of ``n`` items of ``labels`` (int labels, one per item); see the module doc."""
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if not 0 <= n <= labels.numel():
        raise ConfigError(f"cannot sample {n} images from {labels.numel()}")
    generator = torch.Generator().manual_seed(int(seed))
    if not balanced:
        return SamplePlan((-1,), (torch.randperm(labels.numel(), generator=generator),), (n,), None)
    classes = torch.unique(labels).tolist()
    k = max(1, len(classes))
    counts = torch.full((len(classes),), n // k, dtype=torch.int64)
    counts[torch.randperm(len(classes), generator=generator)[: n % k]] += 1
    perms = []
    for label in classes:
        members = torch.nonzero(labels == label).flatten()
        perms.append(members[torch.randperm(members.numel(), generator=generator)])
    order = torch.randperm(n, generator=generator)
    return SamplePlan(tuple(classes), tuple(perms), tuple(counts.tolist()), order)


def select(plan: SamplePlan, usable: Callable[[list[int]], list[bool]] | None = None,
           class_name: Callable[[int], str] = str) -> torch.Tensor:
    """The indices the plan draws, replacing items that ``usable`` rejects by the next ones.

    ``usable(indices) -> [bool]`` is asked about the candidates still undecided, in rounds (all
    classes' shortfalls at once, so that a caller can decode them in parallel); None means that
    every item is usable.
    """
    verdict: dict[int, bool] = {}
    taken = [0] * len(plan.perms)  # how far into each permutation the candidates reach
    while True:
        asks, short = [], False
        for g, (perm, count) in enumerate(zip(plan.perms, plan.counts)):
            good = sum(verdict.get(i, True) for i in perm[: taken[g]].tolist())
            need = count - good
            if need > 0:
                if taken[g] + need > perm.numel():
                    _too_few(plan, g, good, class_name, usable is not None)
                asks.extend(perm[taken[g]: taken[g] + need].tolist())
                taken[g] += need
                short = True
        if not short:
            break
        if usable is None:
            continue
        verdict.update(zip(asks, usable(asks)))
    parts = [torch.tensor([i for i in perm[: taken[g]].tolist() if verdict.get(i, True)], dtype=torch.int64)
             for g, perm in enumerate(plan.perms)]
    selection = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    return selection if plan.order is None else selection[plan.order]


def _too_few(plan: SamplePlan, g: int, good: int, class_name, after_skips: bool):
    label = plan.groups[g]
    what = "images" if label < 0 else f"images of class {class_name(label)!r}"
    if after_skips and good < plan.perms[g].numel():
        raise DataError(f"cannot sample {plan.counts[g]} {what}: only {good} of {plan.perms[g].numel()} are readable")
    raise ConfigError(f"cannot sample {plan.counts[g]} {what}: only {plan.perms[g].numel()}")


def balanced_indices(labels, n: int, seed: int, balanced: bool = True) -> torch.Tensor:
    """``n`` distinct indices into ``labels``, chosen and ordered by ``seed`` (see the module doc)."""
    return select(plan_sample(labels, n, seed, balanced))
