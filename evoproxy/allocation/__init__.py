"""Bit allocation: the bit configuration a proxy prefers within a model-size or BOPs budget.

The entry point is :func:`allocate` (:mod:`evoproxy.allocation.allocator`); ``optimise`` (pure
optimisers: additivity test, exact DP, evolutionary search), ``model`` (a model's allocation problem
from its MQ-Bench table, budgets), ``scoring`` (a proxy's score of one configuration), ``ptq``
(measured top-1 of a configuration, cached).
"""
from evoproxy.allocation.allocator import Allocation, Allocator, allocate, parse_budget

__all__ = ["Allocation", "Allocator", "allocate", "parse_budget"]
