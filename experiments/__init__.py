"""Thin scripts that regenerate the paper-style tables and plots through the public API.

Run one with ``python -m experiments.<name>``; each writes CSV + markdown (+ PNG) under
``results/<name>/`` and prints where it wrote. ``python -m experiments.all`` runs them all.
"""
