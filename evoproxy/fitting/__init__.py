"""Fitting: proxies with parameters fitted to a benchmark's ground truth.

Entry points: :func:`evoproxy.fitting.calibrate.calibrate` (per-layer calibration of a proxy's layer
weights) and :func:`evoproxy.fitting.parzc.parzc` (the ParZC baseline). Nothing is imported here.
"""
