"""Bit allocation internals; the entry point is :func:`evoproxy.allocate.allocate`.

``optimise`` (pure optimisers: additivity test, exact DP, evolutionary search), ``model`` (a model's
allocation problem from its MQ-Bench table, budgets), ``scoring`` (a proxy's score of one
configuration), ``ptq`` (measured top-1 of a configuration, cached).
"""
