"""The proxy language: typed operators, their one batched implementation, proxy trees and the search space.

Entry points: :func:`evoproxy.language.tree.load_proxy` / :class:`~evoproxy.language.tree.Proxy` (proxy
files, parser, rendering, canonical form), :data:`evoproxy.language.ops.OPS` (the typed operator registry,
kernels in :mod:`~evoproxy.language.opkernels`), :func:`evoproxy.language.vectorised.tree_values` over
:func:`~evoproxy.language.vectorised.stack` (the one evaluator: a tree over many networks at once, used by
scoring and the search alike), :func:`evoproxy.language.cost.tree_cost` (the tensor elements a tree's
operators process: the screening's cost bound) and
:class:`evoproxy.language.space.SearchSpace` (the DEAP adapter). Nothing is imported here.
"""
