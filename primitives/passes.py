"""The passes of primitive extraction: forwards with hooks on the Conv2d/Linear modules, one
``torch.autograd.grad`` per pass, and the Hessian estimators (joint Hutchinson diagonal, per-layer block
traces, finite differences). See :mod:`primitives.core` for the conventions.

Torch, math and the standard library only (plus :mod:`primitives.kernels`): like that module, its
source is copied into exported proxy modules, and :mod:`primitives.core` calls it.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from primitives.kernels import (BLOCK_PROBE_TAG, DATA, FD_REL_STEP, HESSIAN, NOISE, PASS_ORDER, VIRTUAL, Capture,
                                ExtractionError, LayerInfo, derive_seed, generator, spatial_mean)
from primitives.richkernels import RICH_NEEDS, SIGN_NEEDS, record_signs, rich_data_pass


def run_passes(model: nn.Module, candidates: dict, x, y, passes: Mapping, probes: int, seed: int, noise_std: float,
               channels_last: bool = True, hessian_method: str = "exact", fd_step: float | None = FD_REL_STEP):
    """Run the passes ``passes`` ({pass: what it must record}; empty: one no-grad forward) in PASS_ORDER.

    Returns (layers [LayerInfo] in hook order, {pass: one Capture per layer}, the data pass's loss or
    None). Buffers are restored after every pass and ``requires_grad`` flags at the end."""
    passes = {p: set(n) for p, n in passes.items()} or {DATA: set()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grad_flags = [(m.weight, m.weight.requires_grad) for m in model.modules() if id(m) in candidates]
    for w, _ in grad_flags:
        w.requires_grad_(True)
    layers, captures, loss_data = None, {}, None

    def run(xp, needs, probes_here, yp=None, sum_logits=False):
        expected = None if layers is None else [l.module for l in layers]
        for safe in (False, True):
            try:
                result = run_pass(model, candidates, xp, y if yp is None else yp, frozenset(needs), probes_here,
                                  derive_seed("hutchinson", seed), expected, safe=safe, sum_logits=sum_logits)
            finally:
                for b, saved in buffers:
                    b.data.copy_(saved)
            if result is not None:
                return result
        raise AssertionError("unreachable")  # safe mode either returns or raises

    try:
        for pass_ in PASS_ORDER:
            if pass_ not in passes:
                continue
            if pass_ in (DATA, HESSIAN):
                xp = x
            elif pass_ == VIRTUAL:  # EMQ's virtual gradient: an all-ones batch of the batch's shape
                xp = torch.ones(x.shape, dtype=x.dtype, device=x.device)
            elif pass_ == NOISE:
                xp = torch.randn(x.shape, generator=generator("noise", seed), dtype=x.dtype).to(x.device)
            else:
                xp = x + noise_std * torch.randn(x.shape, generator=generator("perturb", seed), dtype=x.dtype).to(x.device)
            joint = pass_ != HESSIAN or "hdiag" in passes[HESSIAN]  # the joint-probe Hessian (or an input pass)
            fd = pass_ == HESSIAN and hessian_method != "exact"
            if channels_last and (pass_ != HESSIAN or fd) and xp.dim() == 4:
                xp = xp.contiguous(memory_format=torch.channels_last)
            if not joint:  # only the per-layer block traces: a no-grad forward finds the layers if needed
                order = layers if layers is not None else run(x, set(), 0)[0]
                caps, loss = [Capture() for _ in order], None
            elif fd:
                base = None
                if hessian_method == "fd" and DATA in captures and "wgrad" in passes[DATA]:
                    base = [c.wgrad for c in captures[DATA]]  # same input, layout and weights: reuse g(w)
                order, caps = fd_hessian(run, xp, probes, derive_seed("hutchinson", seed), hessian_method,
                                         base, layers, fd_step)
                loss = None
            else:
                order, caps, loss = run(xp, set() if pass_ == HESSIAN else passes[pass_], probes if pass_ == HESSIAN else 0,
                                        sum_logits=pass_ == VIRTUAL)
            if pass_ == HESSIAN and "hblock" in passes[HESSIAN]:
                try:  # exact block Hessian-vector products on the contiguous batch, like the joint estimate
                    traces = block_hessian_traces(model, [l.module.weight for l in order], x, y, probes,
                                                  derive_seed(BLOCK_PROBE_TAG, seed))
                finally:
                    for b, saved in buffers:
                        b.data.copy_(saved)
                for cap, value in zip(caps, traces):
                    cap.hblock = value
            if layers is None:
                layers = order
            captures[pass_] = caps
            if pass_ == DATA and passes[DATA] & RICH_NEEDS:  # ZiCo mini-batches, input Jacobian, graph
                try:
                    rich_data_pass(run, model, candidates, xp, y, passes[DATA], layers, caps)
                finally:
                    for b, saved in buffers:
                        b.data.copy_(saved)
            if pass_ == DATA:
                loss_data = loss
    finally:
        for w, flag in grad_flags:
            w.requires_grad_(flag)
    return layers, captures, loss_data


def run_pass(model, candidates: dict, x, y, needs: frozenset, probes: int, probe_seed: int,
             expected: list | None, safe: bool = False, sum_logits: bool = False):
    """One forward (+ backward) of ``model`` on (x, y) with hooks on the Conv2d/Linear modules.

    The objective is the mean cross-entropy of the logits, or with ``sum_logits`` the sum of all logits
    (EMQ's virtual gradient; ``y`` unused).

    Returns (layers as LayerInfo in hook order, captures, loss), or None when a layer output was
    modified in place later in the forward (re-run with ``safe``, which hands a clone of each layer
    output to the rest of the model). ``probes`` > 0 also computes the Hutchinson diagonal of the
    weights' Hessian on the same graph, probes spanning all layers jointly.
    """
    order: list[LayerInfo] = []
    caps: list[Capture] = []
    outs: list[torch.Tensor] = []
    versions: list[int] = []
    seen: set[int] = set()
    keep_out = "out" in needs or "ograd" in needs

    def hook(module, args, output):
        key = id(module)
        if key in seen:
            raise ExtractionError(f"layer {candidates[key][0]!r} runs more than once per forward; shared layers are not supported")
        seen.add(key)
        name, kind = candidates[key]
        inp = args[0] if args else None
        order.append(LayerInfo(name, kind, module, tuple(inp.shape[1:]) if isinstance(inp, torch.Tensor) else (),
                               tuple(output.shape[1:])))
        cap = Capture()
        if "act_in" in needs:
            cap.act_in = spatial_mean(inp.detach(), kind).clone()
        if "act_out" in needs:
            cap.act_out = spatial_mean(output.detach(), kind).clone()
        if needs & SIGN_NEEDS:
            record_signs(cap, inp, kind, needs)
        if keep_out:
            outs.append(output)
            versions.append(output._version)
            if "out" in needs:
                cap.out = output.detach()
        caps.append(cap)
        if safe and keep_out:
            return output.clone()
        return None

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in candidates]
    grad_w = "wgrad" in needs or probes > 0
    grad_o = "ograd" in needs
    try:
        with torch.set_grad_enabled(grad_w or grad_o):
            logits = model(x)
            if not isinstance(logits, torch.Tensor):
                raise ExtractionError(f"model returned {type(logits).__name__}, expected a logits tensor")
            loss = logits.sum() if sum_logits else F.cross_entropy(logits, y)
    finally:
        for h in handles:
            h.remove()
    if expected is not None and [l.module for l in order] != expected:
        raise ExtractionError("the set or order of Conv2d/Linear layers changed between passes "
                              "(input-dependent control flow is not supported)")
    if keep_out and any(o._version != v for o, v in zip(outs, versions)):
        if safe:
            raise ExtractionError("a layer output was modified in place even with cloned outputs")
        return None  # caller re-runs in safe mode
    loss_value = float(loss.detach())
    if not (grad_w or grad_o):
        return order, caps, loss_value
    weights = [l.module.weight for l in order] if grad_w else []
    grads = torch.autograd.grad(loss, weights + (outs if grad_o else []), allow_unused=True, create_graph=probes > 0)
    nw = len(weights)
    for i, cap in enumerate(caps):
        if grad_w and "wgrad" in needs:
            g = grads[i]
            cap.wgrad = torch.zeros_like(weights[i]).detach() if g is None else g.detach()
        if grad_o:
            g = grads[nw + i]
            cap.ograd = torch.zeros_like(outs[i]).detach() if g is None else g.detach()
    if probes > 0:
        gen = torch.Generator().manual_seed(probe_seed)
        live = [i for i in range(nw) if grads[i] is not None and grads[i].requires_grad]
        diag = [torch.zeros_like(w, memory_format=torch.contiguous_format).detach() for w in weights]
        for k in range(probes):
            zs = [(torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1).to(w.device) for w in weights]
            if live:
                hz = torch.autograd.grad([grads[i] for i in live], weights, grad_outputs=[zs[i] for i in live],
                                         retain_graph=k < probes - 1, allow_unused=True)
                for i in range(nw):
                    if hz[i] is not None:
                        diag[i].addcmul_(zs[i], hz[i])
        for i, cap in enumerate(caps):
            cap.hdiag = diag[i].div_(probes)
    del grads, loss, logits
    return order, caps, loss_value


def block_hessian_traces(model, weights, x, y, probes: int, probe_seed: int) -> list[float]:
    """Hutchinson estimate of Tr(H_ll) of each layer's Hessian block: ``probes`` Rademacher probes z_l
    supported on that layer's weights only, mean of z_l . (H_ll z_l) from one exact block Hessian-vector
    product each (double backprop on one graph, accumulated in float64). One generator seeded with
    ``probe_seed`` draws all probes, layer by layer in forward order. A layer the loss does not depend
    on (or only linearly) gets 0. This is the estimator of the ``hawq_v2`` baseline, probe for probe."""
    with torch.enable_grad():
        logits = model(x)
        if not isinstance(logits, torch.Tensor):
            raise ExtractionError(f"model returned {type(logits).__name__}, expected a logits tensor")
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
    gen = torch.Generator().manual_seed(probe_seed)
    out = []
    for w, g in zip(weights, grads):
        if g is None or not g.requires_grad:
            out.append(0.0)
            continue
        total = 0.0
        for _ in range(probes):
            z = torch.randint(0, 2, w.shape, generator=gen).to(w.dtype).mul_(2).sub_(1).to(w.device)
            (hz,) = torch.autograd.grad(g, w, grad_outputs=z, retain_graph=True)
            total += float((z.double() * hz.double()).sum())
        out.append(total / probes)
    del grads, loss, logits
    return out


def fd_hessian(run, xp, probes: int, probe_seed: int, method: str, base, layers, rel_step: float):
    """Hutchinson diagonal with H z from finite differences of weight gradients (see the docstring).

    ``run(xp, needs, probes)`` is one plain gradient pass (buffers restored after it). ``base`` is
    g(w) from the data pass when it can be reused (forward differences only). Same probes z as the
    exact path; the weights are perturbed in place and restored bit-identically from copies.
    Returns (layers, captures).
    """
    order = layers
    if method == "fd" and base is None:
        order, caps0, _ = run(xp, {"wgrad"}, 0)
        base = [c.wgrad for c in caps0]
    elif order is None:
        order, _, _ = run(xp, set(), 0)  # a no-grad forward, just to find the layers and their order
    weights = [l.module.weight for l in order]
    saved = [w.detach().clone() for w in weights]
    numel = sum(w.numel() for w in saved)
    rms = math.sqrt(sum(float(w.double().pow(2).sum()) for w in saved) / max(numel, 1))
    h = rel_step * rms if rms > 0 else rel_step
    gen = torch.Generator().manual_seed(probe_seed)
    diag = [torch.zeros_like(w, memory_format=torch.contiguous_format) for w in saved]

    def grads_at(zs, sign):
        with torch.no_grad():
            for w, s, z in zip(weights, saved, zs):
                w.copy_(s)
                w.add_(z, alpha=sign * h)
        _, caps, _ = run(xp, {"wgrad"}, 0)
        return [c.wgrad for c in caps]

    try:
        for _ in range(probes):
            zs = [(torch.randint(0, 2, w.shape, generator=gen).to(w.dtype) * 2 - 1).to(w.device) for w in weights]
            plus = grads_at(zs, 1.0)
            if method == "fd":
                hz = [(p - b).div_(h) for p, b in zip(plus, base)]
            else:
                minus = grads_at(zs, -1.0)
                hz = [(p - m).div_(2 * h) for p, m in zip(plus, minus)]
            for d, z, v in zip(diag, zs, hz):
                d.addcmul_(z, v)
    finally:
        with torch.no_grad():
            for w, s in zip(weights, saved):
                w.copy_(s)
    caps = []
    for d in diag:
        cap = Capture()
        cap.hdiag = d.div_(probes)
        caps.append(cap)
    return order, caps
