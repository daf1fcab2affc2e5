"""Kernels of the richer statistics (issue 14): activation sign codes and their Hamming kernel (NWOT),
gradient mean / standard deviation across mini-batches (ZiCo), the per-sample input Jacobian
(jacob_cov) and architecture-graph features of the autograd graph.

Torch, math and the standard library only (plus :mod:`primitives.kernels`): ``evoproxy export`` copies
this module's source into standalone proxy modules, so the library and exported proxies share one
implementation. All are data-pass primitives, computed only on request (``default=False``).

Definitions (x: a layer's input on the batch, N samples; L_i: mean cross-entropy of mini-batch i):

* ``act_sign`` [N, C_in]: the binary activation code c = 1[x > 0] of every input unit of the layer,
  averaged over spatial positions like the other activations (the fraction of units of channel c
  that are on; exactly binary for a linear layer). In ReLU -> conv networks (NAS-Bench-201's
  ReLU-Conv-BN, a ResNet's conv after the block's ReLU) 1[x > 0] is the on/off pattern of that ReLU:
  the codes of NWOT (Mellor et al., "Neural Architecture Search without Training", ICML 2021).
  The full codes have C*H*W entries per sample (16k at NB201's first stage); they are kept only
  through ``hamming_kernel``.
* ``hamming_kernel`` [N, N]: K_ij = N_A - d_H(c_i, c_j) = c_i.c_j + (1 - c_i).(1 - c_j) over the
  layer's N_A = C*H*W full-resolution input units (NWOT's per-ReLU kernel; their score is
  log|det sum_l K_l|). Integer-valued, exact in float32 below 2^24 units.
* ``grad_absmean`` and ``grad_std`` (shape of W): the batch is split into k = ``ZICO_SPLITS`` = 2
  contiguous mini-batches (samples [i*N//k, (i+1)*N//k)), g_i = dL_i/dW on each (its own forward,
  batch-norm with that mini-batch's statistics); grad_absmean = (1/k) sum_i |g_i| and grad_std =
  sqrt((1/k) sum_i (g_i - mean_i g_i)^2) (population std), as in ZiCo (Li et al., "ZiCo:
  Zero-shot NAS via Inverse Coefficient of Variation on Gradients", ICLR 2023; its reference code
  splits one batch in two). ZiCo's score is sum_l log(sum_theta grad_absmean / grad_std over
  theta with std != 0).
* ``input_jacobian`` [N, D]: J_n = d(sum_n' sum_c f_c(x_n'))/dx_n flattened (D = prod of the input
  shape), one backward of the summed logits as jacob_cov does (Mellor et al., arXiv 2006.04647 v1;
  in train mode batch-norm couples the samples, as there). A per-network statistic: the same tensor
  is attached to every layer (stored once per network; a layer_sum over it counts it L times).
* Graph features (0-d float64, exact integers) of the autograd graph of one forward on the batch,
  from the input to the logits, as a directed multigraph (an op using a tensor twice gives two
  edges). Tensors that do not depend on the input (``zeros_like(x)``, parameters) carry no edge
  from it, so e.g. a NAS-Bench-201 cell of ``none`` edges cuts every path. Counting only Conv2d /
  Linear layers along a path, and P(l) = (#paths input -> l) * (#paths l -> logits):
  ``graph_depth`` the most layers on a path from the input to the layer, itself included (0 when
  the input does not reach it); ``graph_paths`` P(l); ``graph_residual`` 1 when 0 < P(l) < P (some
  input-output path bypasses the layer: a residual branch, its shortcut or a parallel cell edge),
  else 0; per network (on every layer) ``graph_io_paths`` P = #paths input -> logits,
  ``graph_longest`` / ``graph_shortest`` the most / fewest layers on such a path. A network with no
  input-output path gets P = 0 and all of these 0 (graph_depth of layers the input reaches stays).

Measured (10 NB201 networks C=16 N=5 of ``primitives.timing --archs 10 --seed 0``, batch 64 of
CIFAR-10, one thread, each group extracted alone; median CPU-s per network, which approximates the
idle wall time -- the shared 2-core box had load ~9.6 -- and mean ``torch.save`` bytes per network,
full / ``max_elements=4096, float16``): act_sign 0.23 s, 0.44 / 0.23 MB; hamming_kernel 0.40 s,
0.76 / 0.39 MB; grad_absmean + grad_std 0.73 s, 3.39 / 0.51 MB; input_jacobian 0.55 s, 0.80 / 0.39 MB
(stored once when not subsampled; subsampling draws per-layer indices, so each layer keeps its own
4096 entries); the six graph_* 0.42 s, 0.07 MB. For reference the data-pass primitives (weight,
weight_grad, act_in, act_out, act_grad, fisher, act_x_grad) take 0.53 s, 4.76 / 1.23 MB. Each time
includes the data pass's own forward (act_sign and hamming_kernel ride on it; the others add one
forward + backward, the ZiCo ones k of them on N/k samples).
"""
from __future__ import annotations

import torch

from primitives.kernels import Capture, ExtractionError, spatial_mean

ZICO_SPLITS = 2  # mini-batches of ZiCo's gradient statistics (its reference code splits the batch in two)
RICH_NEEDS = frozenset({"zico", "jacobian", "graph"})  # recorded by rich_data_pass after the data pass
GRAPH_KEYS = ("depth", "paths", "residual", "io_paths", "longest", "shortest")


def record_sign(cap: Capture, inp: torch.Tensor, out: torch.Tensor) -> None:
    """act_sign of one layer input (a forward recorder of the data pass, :func:`primitives.passes.run_pass`)."""
    cap.values["sign"] = spatial_mean((inp.detach() > 0).to(inp.dtype), cap.layer.kind)


def record_hkernel(cap: Capture, inp: torch.Tensor, out: torch.Tensor) -> None:
    """hamming_kernel of one layer input (a forward recorder of the data pass)."""
    c = (inp.detach() > 0).flatten(1).to(torch.float32)
    cap.values["hkernel"] = c @ c.T + (1 - c) @ (1 - c).T


def rich_data_pass(run, model, candidates: dict, x, y, needs, layers, caps) -> None:
    """Record the ZiCo statistics, the input Jacobian and the graph features into the data pass's
    captures. ``run(x, needs, y)`` is one plain pass (buffers restored after it); the caller
    restores buffers after the input pass."""
    if "zico" in needs:
        n = x.shape[0]
        if n < ZICO_SPLITS:
            raise ExtractionError(f"grad_absmean/grad_std split the batch into {ZICO_SPLITS} mini-batches: "
                                  f"it needs at least {ZICO_SPLITS} samples, got {n}")
        bounds = [(i * n // ZICO_SPLITS, (i + 1) * n // ZICO_SPLITS) for i in range(ZICO_SPLITS)]
        grads = [[c.values["wgrad"] for c in run(x[a:b], {"wgrad"}, y[a:b])[0]] for a, b in bounds]
        for li, cap in enumerate(caps):
            g = torch.stack([grads[i][li] for i in range(ZICO_SPLITS)])
            cap.values["zico"] = (g.abs().mean(dim=0), g.std(dim=0, unbiased=False))
    if needs & {"jacobian", "graph"}:
        jacobian, features = input_pass(model, candidates, x, layers, "jacobian" in needs, "graph" in needs)
        for li, cap in enumerate(caps):
            if jacobian is not None:
                cap.values["jacobian"] = jacobian
            if features is not None:
                cap.values["graph"] = features[li]


def input_pass(model, candidates: dict, x, layers, jacobian: bool, graph: bool):
    """One forward on ``x`` requiring grad: (input Jacobian [N, D] or None, per-layer graph features or None)."""
    xg = x.detach().clone().requires_grad_(True)
    nodes: dict = {}

    def hook(module, args, output):
        nodes.setdefault(id(module), output.grad_fn if isinstance(output, torch.Tensor) else None)

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in candidates]
    try:
        with torch.enable_grad():
            logits = model(xg)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(logits, torch.Tensor):
        raise ExtractionError(f"model returned {type(logits).__name__}, expected a logits tensor")
    features = None
    if graph:
        features = graph_features(logits.grad_fn, xg, [nodes.get(id(l.module)) for l in layers])
    jac = None
    if jacobian:
        g = None
        if logits.requires_grad:
            (g,) = torch.autograd.grad(logits.sum(), xg, allow_unused=True)
        jac = (torch.zeros_like(xg) if g is None else g).detach().flatten(1).contiguous()
    del logits
    return jac, features


def autograd_dag(roots, source: torch.Tensor):
    """The autograd graph reaching the nodes ``roots`` (grad_fns; None entries are skipped) as (nodes in
    topological order, inputs first; edges (u, v) as index pairs, one per use, data flowing u -> v; the
    index of ``source``'s gradient accumulator or None; {id(node): index})."""
    index, order, expanded, keep = {}, [], set(), []  # keep holds every node so that ids stay unique
    stack = [(root, False) for root in reversed(roots) if root is not None]
    while stack:
        node, done = stack.pop()
        if done:
            index[id(node)] = len(order)
            order.append(node)
            continue
        if id(node) in expanded:
            continue
        expanded.add(id(node))
        keep.append(node)
        stack.append((node, True))  # finished after all of its inputs (a DAG has no cycle to break this)
        for nxt, _ in node.next_functions:
            if nxt is not None and id(nxt) not in expanded:
                stack.append((nxt, False))
    edges = [(index[id(nxt)], index[id(node)]) for node in order for nxt, _ in node.next_functions if nxt is not None]
    src = next((i for i, node in enumerate(order) if getattr(node, "variable", None) is source), None)
    return order, edges, src, index


def graph_features(root, source: torch.Tensor, layer_nodes) -> list[dict]:
    """Per layer {GRAPH_KEYS: number} on the autograd DAG from ``source`` to ``root`` (the logits' grad_fn),
    layers that do not reach the logits included (see the docstring)."""
    order, edges, src, index = autograd_dag([root] + list(layer_nodes), source)
    layer_at = [index.get(id(node)) if node is not None else None for node in layer_nodes]
    return dag_features(len(order), edges, src, index.get(id(root)) if root is not None else None, layer_at)


def dag_features(n: int, edges, src, sink, layer_at) -> list[dict]:
    """Graph features on a DAG with nodes 0..n-1 in topological order (edges (u, v), u < v, with
    multiplicity), input node ``src`` and output node ``sink`` (None: absent) and layer l at node
    ``layer_at[l]`` (None: not in the graph)."""
    ins: list[list[int]] = [[] for _ in range(n)]
    for u, v in edges:
        ins[v].append(u)
    is_layer = [0] * n
    for node in layer_at:
        if node is not None:
            is_layer[node] = 1
    p_in, deep, shallow = [0] * n, [0] * n, [0] * n
    if src is not None:
        p_in[src] = 1
    for v in range(n):
        reach = [u for u in ins[v] if p_in[u] > 0]
        if reach:
            p_in[v] = sum(p_in[u] for u in ins[v])
            deep[v] = is_layer[v] + max(deep[u] for u in reach)
            shallow[v] = is_layer[v] + min(shallow[u] for u in reach)
    p_out = [0] * n
    if sink is not None:
        p_out[sink] = 1
        for v in range(n - 1, -1, -1):
            for u in ins[v]:
                p_out[u] += p_out[v]
    total = 0 if sink is None else p_in[sink]
    net = {"io_paths": total, "longest": deep[sink] if total else 0, "shortest": shallow[sink] if total else 0}
    out = []
    for node in layer_at:
        paths = 0 if node is None else p_in[node] * p_out[node]
        depth = 0 if node is None or p_in[node] == 0 else deep[node]
        out.append({"depth": depth, "paths": paths, "residual": int(0 < paths < total), **net})
    return out


def p_act_sign(cap):
    return cap.values["sign"]


def p_hamming_kernel(cap):
    return cap.values["hkernel"]


def p_grad_absmean(cap):
    return cap.values["zico"][0]


def p_grad_std(cap):
    return cap.values["zico"][1]


def p_input_jacobian(cap):
    return cap.values["jacobian"]


def graph_value(cap, key: str) -> torch.Tensor:
    return torch.tensor(float(cap.values["graph"][key]), dtype=torch.float64)


def p_graph_depth(cap):
    return graph_value(cap, "depth")


def p_graph_paths(cap):
    return graph_value(cap, "paths")


def p_graph_residual(cap):
    return graph_value(cap, "residual")


def p_graph_io_paths(cap):
    return graph_value(cap, "io_paths")


def p_graph_longest(cap):
    return graph_value(cap, "longest")


def p_graph_shortest(cap):
    return graph_value(cap, "shortest")
