"""Scoring: a proxy's value on benchmark items, and how well values rank the items.

Entry points: :class:`evoproxy.scoring.scorer.Scorer` (one description of a proxy: tree, calibrated,
baseline, callable; the driver over benchmark items), :func:`evoproxy.scoring.evaluation.proxy_reports`
(score and correlate on a benchmark sample), :mod:`evoproxy.scoring.metrics` (rank correlations,
DiffKendall) and :mod:`evoproxy.scoring.baselines` (the hand-made proxies). Nothing is imported here.
"""
