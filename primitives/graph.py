"""The computation graph of a network as a ``networkx`` graph, and a path-enumerating reference of the
``graph_*`` primitives.

The primitives themselves (``graph_depth``, ``graph_paths``, ``graph_residual``, ``graph_io_paths``,
``graph_longest``, ``graph_shortest``; definitions in :mod:`primitives.richkernels`) are computed by
dynamic programming over the autograd graph in plain Python, so exported proxies stay torch-only.
This module gives the same graph to ``networkx`` (the library's view for users) and
:func:`reference_features` recomputes the features by enumerating paths with
``networkx.all_simple_edge_paths`` (exponential: for checking small networks only)::

    from primitives.graph import computation_graph, reference_features
    g = computation_graph(model, inputs)          # nx.MultiDiGraph, node attrs "op", "layer", "role"
    reference_features(g)                         # {layer name: {depth, paths, residual, ...}}
"""
from __future__ import annotations

import networkx as nx
import torch

from primitives.kernels import fixed_threads, layer_candidates, prepare_batch
from primitives.richkernels import autograd_dag


def computation_graph(model: torch.nn.Module, inputs: torch.Tensor) -> nx.MultiDiGraph:
    """The autograd graph of one forward of ``model`` on ``inputs`` (buffers restored), nodes 0..n-1 in
    topological order with attributes ``op`` (the autograd node's class), ``layer`` (the Conv2d/Linear
    whose output it produces, else None) and ``role`` ("input", "output" or None); one edge per use. Layers
    whose output does not reach the logits are included with their inputs."""
    candidates = layer_candidates(model)
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    nodes: dict = {}

    def hook(module, args, output):
        nodes.setdefault(id(module), output.grad_fn)

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in candidates]
    flags = [(m.weight, m.weight.requires_grad) for m in model.modules() if id(m) in candidates]  # as extract
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        with fixed_threads(1), torch.enable_grad():
            x, _ = prepare_batch(model, inputs, torch.zeros(inputs.shape[0], dtype=torch.long))
            xg = x.detach().clone().requires_grad_(True)
            logits = model(xg)
            order, edges, src, _ = autograd_dag([logits.grad_fn] + list(nodes.values()), xg)
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        for b, saved in buffers:
            b.data.copy_(saved)
    layer_of = {id(node): candidates[key][0] for key, node in nodes.items() if node is not None}
    g = nx.MultiDiGraph()
    for i, node in enumerate(order):
        role = "input" if i == src else "output" if node is logits.grad_fn else None
        g.add_node(i, op=type(node).__name__, layer=layer_of.get(id(node)), role=role)
    g.add_edges_from(edges)
    return g


def reference_features(g: nx.MultiDiGraph) -> dict:
    """{layer name: {"depth", "paths", "residual", "io_paths", "longest", "shortest"}} by enumerating the
    simple paths of ``g`` (a :func:`computation_graph`); the definitions of :mod:`primitives.richkernels`."""
    roles = {r: n for n, r in g.nodes(data="role") if r is not None}
    src, sink = roles.get("input"), roles.get("output")
    layers = {n: name for n, name in g.nodes(data="layer") if name is not None}

    def count(path_nodes):
        return sum(1 for n in path_nodes if n in layers)

    io = [] if src is None or sink is None else [[src] + [v for _, v, _ in p] for p in nx.all_simple_edge_paths(g, src, sink)]
    if src is not None and src == sink:
        io = [[src]]
    net = {"io_paths": len(io), "longest": max(map(count, io), default=0), "shortest": min(map(count, io), default=0)}
    out = {}
    for n, name in layers.items():
        to_layer = [] if src is None else [[src] + [v for _, v, _ in p] for p in nx.all_simple_edge_paths(g, src, n)]
        through = sum(1 for p in io if n in p)
        out[name] = {"depth": max(map(count, to_layer), default=0), "paths": through,
                     "residual": int(0 < through < len(io)), **net}
    return out
