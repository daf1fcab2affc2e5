"""diff_kendall: the smooth Kendall's tau (DiffKendall relaxation) in evoproxy.scoring.metrics."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from evoproxy.scoring.metrics import diff_kendall, kendall

TEMPERATURES = (1.0, 0.1, 1e-2, 1e-3, 1e-5, 1e-8)


def _tau_a(x, y) -> float:
    """Kendall's tau-a by definition, (C - D) / (n (n - 1) / 2), with an explicit pair loop."""
    n = len(x)
    total = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in itertools.combinations(range(n), 2))
    return float(total) / (n * (n - 1) / 2)


def _data(n=40, seed=0, tie_truth=False):
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=n)
    if tie_truth:
        truth = np.round(truth * 2) / 2  # a handful of levels: many tied pairs
    scores = 0.6 * truth + rng.normal(size=n)  # continuous: no ties in the scores
    return scores, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converges_to_scipy_without_ties(seed):
    scores, truth = _data(seed=seed)
    assert len(np.unique(scores)) == len(scores) and len(np.unique(truth)) == len(truth)
    ref = kendalltau(scores, truth).statistic  # tau-b; equals tau-a here (no ties)
    assert ref == pytest.approx(_tau_a(scores, truth), abs=1e-12)
    s = torch.tensor(scores)
    errors = [abs(float(diff_kendall(s, truth, temperature=t)) - ref) for t in TEMPERATURES]
    for variant in ("a", "b"):
        assert float(diff_kendall(s, truth, temperature=1e-8, variant=variant)) == pytest.approx(ref, abs=1e-9)
    assert errors[-1] < 1e-9
    assert errors[0] > 1e-3  # the warm end is genuinely smooth, not already the hard tau


def test_error_bound_holds_at_every_temperature():
    scores, truth = _data(seed=3)
    ref = kendalltau(scores, truth).statistic
    s = torch.tensor(scores)
    iu = np.triu_indices(len(scores), 1)
    for t in TEMPERATURES:
        phi = np.tanh((scores[:, None] - scores[None, :]) / (2 * t))[iu]
        bound = float(np.mean(1 - np.abs(phi)))
        assert abs(float(diff_kendall(s, truth, temperature=t)) - ref) <= bound + 1e-12


def test_ties_in_truth_variant_a_is_tau_a_and_variant_b_is_scipy_tau_b():
    scores, truth = _data(seed=4, tie_truth=True)
    assert len(np.unique(truth)) < len(truth) / 2
    s = torch.tensor(scores)
    tau_b = kendalltau(scores, truth).statistic  # scipy's default variant
    tau_a = _tau_a(scores, truth)
    assert abs(tau_a) < abs(tau_b)  # tied pairs stay in tau-a's denominator
    assert float(diff_kendall(s, truth, temperature=1e-8, variant="a")) == pytest.approx(tau_a, abs=1e-12)
    assert float(diff_kendall(s, truth, temperature=1e-8, variant="b")) == pytest.approx(tau_b, abs=1e-9)
    assert float(diff_kendall(s, truth, temperature=1e-8, variant="b")) == pytest.approx(kendall(scores, truth),
                                                                                      abs=1e-9)


def test_perfect_and_reversed_rankings():
    truth = np.arange(10.0)
    s = torch.tensor(truth * 3.0)
    assert float(diff_kendall(s, truth, temperature=1e-6)) == pytest.approx(1.0)
    assert float(diff_kendall(-s, truth, temperature=1e-6)) == pytest.approx(-1.0)
    # the best untied ranking against tied truth: 40 concordant pairs, 5 tied in truth, none discordant;
    # tau-a = 40 / 45, tau-b = 40 / sqrt(45 * 40) (scipy): neither reaches 1
    tied = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4], dtype=float)
    assert float(diff_kendall(s, tied, temperature=1e-6, variant="a")) == pytest.approx(40 / 45)
    assert float(diff_kendall(s, tied, temperature=1e-6, variant="b")) == pytest.approx(math.sqrt(40 / 45))
    assert math.sqrt(40 / 45) == pytest.approx(kendalltau(truth, tied).statistic)


def test_gradient_is_finite_and_ascends():
    scores, truth = _data(n=60, seed=5)
    for variant in ("a", "b"):
        s = torch.tensor(scores, requires_grad=True)
        tau = diff_kendall(s, torch.tensor(truth), temperature=0.5, variant=variant)
        tau.backward()
        assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
        with torch.no_grad():
            stepped = s + 0.05 * s.grad / s.grad.norm()
            after = diff_kendall(stepped, truth, temperature=0.5, variant=variant)
        assert float(after) > float(tau.detach())
    # truth is never differentiated, even when it is a leaf that requires grad
    y = torch.tensor(truth, requires_grad=True)
    diff_kendall(torch.tensor(scores, requires_grad=True), y, temperature=0.5).backward()
    assert y.grad is None


def test_gradient_ascent_sorts_the_scores():
    truth = np.arange(12.0)
    s = torch.tensor(np.random.default_rng(6).normal(size=12), requires_grad=True)
    for _ in range(100):  # plain gradient ascent (torch.optim's first step costs seconds of imports)
        s.grad = None
        diff_kendall(s, truth, temperature=0.3).backward()
        with torch.no_grad():
            s += 2.0 * s.grad
    assert kendalltau(s.detach().numpy(), truth).statistic == pytest.approx(1.0)


def test_gradient_finite_at_tiny_temperature_and_with_tied_scores():
    s = torch.tensor([0.0, 0.0, 1.0, 2.0], requires_grad=True)  # a tie in the scores
    tau = diff_kendall(s, [1.0, 2.0, 3.0, 4.0], temperature=1e-9)
    tau.backward()
    assert torch.isfinite(s.grad).all()
    assert float(tau.detach()) == pytest.approx(5 / 6)  # the tied pair counts 0, as in tau-a


def test_undefined_cases_are_nan():
    for n in (0, 1):
        s = torch.zeros(n, requires_grad=True)
        out = diff_kendall(s, np.zeros(n))
        assert math.isnan(float(out.detach()))
        out.backward()  # no exception: the NaN is part of the graph
    const_truth = diff_kendall(torch.tensor([1.0, 2.0, 3.0]), [5.0, 5.0, 5.0], variant="b")
    assert math.isnan(float(const_truth))
    assert float(diff_kendall(torch.tensor([1.0, 2.0, 3.0]), [5.0, 5.0, 5.0], variant="a")) == 0.0
    assert math.isnan(float(diff_kendall(torch.ones(3), [1.0, 2.0, 3.0], variant="b")))


def test_argument_checks_and_input_types():
    with pytest.raises(ValueError):
        diff_kendall(torch.zeros(3), [1.0, 2.0])
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            diff_kendall(torch.zeros(3), [1.0, 2.0, 3.0], temperature=bad)
    with pytest.raises(ValueError):
        diff_kendall(torch.zeros(3), [1.0, 2.0, 3.0], variant="c")
    # arrays, lists and integer tensors in; a 0-d tensor of the scores' dtype out
    assert diff_kendall([3, 1, 2], np.array([3, 1, 2]), temperature=1e-6).dtype == torch.float64
    out = diff_kendall(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float32), torch.tensor([3, 1, 2]))
    assert out.dtype == torch.float32 and out.dim() == 0


def test_blocking_matches_one_block(monkeypatch):
    import evoproxy.scoring.metrics as metrics

    scores, truth = _data(n=57, seed=7, tie_truth=True)
    whole = [float(diff_kendall(torch.tensor(scores), truth, temperature=0.2, variant=v)) for v in "ab"]
    monkeypatch.setattr(metrics, "DIFF_KENDALL_BLOCK", 57 * 5)  # 5 rows per block, last block partial
    blocked = [float(metrics.diff_kendall(torch.tensor(scores), truth, temperature=0.2, variant=v)) for v in "ab"]
    assert blocked == pytest.approx(whole, abs=1e-12)


def test_exact_with_a_finite_gradient_for_n_1000():
    """A holdout-sized input (blocked over pairs): exact at a tiny temperature, gradient finite everywhere.
    Speed is not asserted here (tests check correctness, not wall time)."""
    scores, truth = _data(n=1000, seed=8)
    s = torch.tensor(scores, requires_grad=True)
    tau = diff_kendall(s, truth, temperature=1e-8)
    tau.backward()
    assert float(tau.detach()) == pytest.approx(kendalltau(scores, truth).statistic, abs=1e-9)
    assert torch.isfinite(s.grad).all()
