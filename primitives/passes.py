"""The passes of primitive extraction: forwards with hooks on the Conv2d/Linear modules, one
``torch.autograd.grad`` per pass, and the Hessian estimators (joint Hutchinson diagonal, per-layer block
traces, finite differences). See :mod:`primitives.core` for the conventions.

Each pass is a step function (``data_step``, ``noise_step``, ``hessian_step``, ...) on a :class:`PassRun`, the
network's passes so far; :func:`pass_steps` picks the steps a set of primitives needs and :func:`run_steps` runs
them. What a pass's forward hook records of a layer is a list of recorders (``record_act_in``, ...: one function
per statistic, ``RECORDERS``), picked by :func:`pass_recorders`. So an exported proxy module carries only its own
passes and recorders (no name of an optional step, recorder or estimator appears in code every proxy reaches).

Torch, math and the standard library only (plus :mod:`primitives.kernels`): like that module, the functions a
proxy reaches are copied into exported proxy modules, and :mod:`primitives.core` calls it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from primitives.kernels import (BLOCK_PROBE_TAG, DATA, FD_REL_STEP, HESSIAN, NOISE, PASS_ORDER, PERTURB, VIRTUAL,
                                Capture, ExtractionError, LayerInfo, derive_seed, generator, spatial_mean)
from primitives.richkernels import RICH_NEEDS, record_hkernel, record_sign, rich_data_pass


def run_passes(model: nn.Module, candidates: dict, x, y, passes: Mapping, probes: int, seed: int, noise_std: float,
               channels_last: bool = True, hessian_method: str = "exact", fd_step: float | None = FD_REL_STEP):
    """Run the passes ``passes`` ({pass: what it must record}; empty: one no-grad forward) in PASS_ORDER.

    Returns (layers [LayerInfo] in hook order, {pass: one Capture per layer}, the data pass's loss or
    None). Buffers are restored after every pass and ``requires_grad`` flags at the end."""
    passes = {p: set(n) for p, n in passes.items()} or {DATA: set()}
    run = PassRun(model, candidates, x, y, passes, probes, seed, noise_std, channels_last, hessian_method, fd_step,
                  pass_recorders(passes))
    return run_steps(run, pass_steps(passes, hessian_method))


def pass_steps(passes: Mapping, hessian_method: str = "exact") -> list:
    """The step functions that run ``passes`` in PASS_ORDER (an exported proxy module carries only these)."""
    inputs = {DATA: data_step, NOISE: noise_step, PERTURB: perturb_step, VIRTUAL: virtual_step}
    steps = [inputs[p] for p in PASS_ORDER if p in passes and p in inputs]
    if DATA in passes and passes[DATA] & RICH_NEEDS:  # ZiCo mini-batches, input Jacobian, graph
        steps.insert(1, rich_step)
    if HESSIAN in passes and "hdiag" in passes[HESSIAN]:  # the joint-probe Hessian
        steps.append(hessian_step if hessian_method == "exact" else fd_hessian_step)
    if HESSIAN in passes and "hblock" in passes[HESSIAN]:
        steps.append(block_trace_step)
    return steps


def record_act_in(cap: Capture, inp: torch.Tensor, out: torch.Tensor) -> None:
    cap.values["act_in"] = spatial_mean(inp.detach(), cap.layer.kind).clone()


def record_act_out(cap: Capture, inp: torch.Tensor, out: torch.Tensor) -> None:
    cap.values["act_out"] = spatial_mean(out.detach(), cap.layer.kind).clone()


def record_out(cap: Capture, inp: torch.Tensor, out: torch.Tensor) -> None:
    cap.values["out"] = out.detach()


# what a pass's forward hook records of a layer (the gradients "wgrad" / "ograd" come from run_pass's
# autograd.grad after the forward)
RECORDERS = {"act_in": record_act_in, "act_out": record_act_out, "out": record_out, "sign": record_sign,
             "hkernel": record_hkernel}


def pass_recorders(passes: Mapping) -> dict:
    """{pass: its forward recorders} of ``passes`` ({pass: what it must record}), passes without any left out."""
    out = {p: tuple(fn for what, fn in RECORDERS.items() if what in needs) for p, needs in passes.items()}
    return {p: fns for p, fns in out.items() if fns}


def run_steps(run: "PassRun", steps) -> tuple:
    """Run the pass ``steps`` with the layers' weights requiring grad (flags restored at the end).
    Returns (layers, captures, the data pass's loss or None)."""
    flags = [(m.weight, m.weight.requires_grad) for m in run.model.modules() if id(m) in run.candidates]
    for w, _ in flags:
        w.requires_grad_(True)
    try:
        for step in steps:
            step(run)
    finally:
        for w, flag in flags:
            w.requires_grad_(flag)
    return run.layers, run.captures, run.loss


@dataclass
class PassRun:
    """The passes of one network: settings, what they recorded so far, and :meth:`run` (one pass)."""

    model: nn.Module
    candidates: dict
    x: torch.Tensor
    y: torch.Tensor
    passes: Mapping  # pass -> what it must record
    probes: int = 0
    seed: int = 0
    noise_std: float = 0.01
    channels_last: bool = True
    hessian_method: str = "exact"
    fd_step: float | None = FD_REL_STEP
    recorders: Mapping = field(default_factory=dict)  # pass -> its forward recorders (pass_recorders)
    layers: list | None = None  # LayerInfo in hook order (the first pass's)
    captures: dict = field(default_factory=dict)  # pass -> one Capture per layer
    loss: float | None = None  # the data pass's
    buffers: list = field(default_factory=list)

    def __post_init__(self):
        self.buffers = [(b, b.detach().clone()) for b in self.model.buffers()]

    def restore(self):
        for b, saved in self.buffers:
            b.data.copy_(saved)

    def run(self, xp, needs, yp=None, sum_logits=False, hessian=None, recorders=()):
        """:func:`run_pass` on ``xp`` (re-run in safe mode when needed), buffers restored after it."""
        expected = None if self.layers is None else [l.module for l in self.layers]
        for safe in (False, True):
            try:
                result = run_pass(self.model, self.candidates, xp, self.y if yp is None else yp, frozenset(needs),
                                  expected, safe, sum_logits, hessian, recorders)
            finally:
                self.restore()
            if result is not None:
                return result
        raise AssertionError("unreachable")  # safe mode either returns or raises

    def layout(self, xp):
        """``xp`` in the input passes' memory layout (channels_last for 4-d inputs when asked)."""
        return xp.contiguous(memory_format=torch.channels_last) if self.channels_last and xp.dim() == 4 else xp

    def record(self, pass_, caps, loss=None):
        if self.layers is None:
            self.layers = [c.layer for c in caps]
        self.captures[pass_] = caps
        if pass_ == DATA:
            self.loss = loss


def data_step(run: PassRun):
    """The data pass: the batch itself."""
    run.record(DATA, *run.run(run.layout(run.x), run.passes[DATA], recorders=run.recorders.get(DATA, ())))


def noise_step(run: PassRun):
    """The noise pass: N(0, 1) inputs of the batch's shape."""
    x = run.x
    xp = torch.randn(x.shape, generator=generator("noise", run.seed), dtype=x.dtype).to(x.device)
    run.record(NOISE, *run.run(run.layout(xp), run.passes[NOISE], recorders=run.recorders.get(NOISE, ())))


def perturb_step(run: PassRun):
    """The perturb pass: the batch plus noise_std * N(0, 1)."""
    x = run.x
    xp = x + run.noise_std * torch.randn(x.shape, generator=generator("perturb", run.seed), dtype=x.dtype).to(x.device)
    run.record(PERTURB, *run.run(run.layout(xp), run.passes[PERTURB], recorders=run.recorders.get(PERTURB, ())))


def virtual_step(run: PassRun):
    """EMQ's virtual gradient: an all-ones batch of the batch's shape, the sum of the logits as objective."""
    xp = torch.ones(run.x.shape, dtype=run.x.dtype, device=run.x.device)
    run.record(VIRTUAL, *run.run(run.layout(xp), run.passes[VIRTUAL], sum_logits=True,
                                 recorders=run.recorders.get(VIRTUAL, ())))


def rich_step(run: PassRun):
    """ZiCo mini-batches, input Jacobian and graph features into the data pass's captures."""
    try:
        rich_data_pass(run.run, run.model, run.candidates, run.layout(run.x), run.y, run.passes[DATA], run.layers,
                       run.captures[DATA])
    finally:
        run.restore()


def hessian_step(run: PassRun):
    """The joint Hutchinson diagonal (exact Hessian-vector products) on the contiguous batch."""
    seed = derive_seed("hutchinson", run.seed)
    hessian = None if run.probes <= 0 else (lambda g, w, caps: hutchinson_diag(g, w, caps, run.probes, seed))
    run.record(HESSIAN, run.run(run.x, set(), hessian=hessian)[0])


def fd_hessian_step(run: PassRun):
    """The joint Hutchinson diagonal from finite differences of weight gradients (channels_last like the input passes)."""
    base = None
    if run.hessian_method == "fd" and DATA in run.captures and "wgrad" in run.passes[DATA]:
        base = [c.values["wgrad"] for c in run.captures[DATA]]  # same input, layout and weights: reuse g(w)
    run.record(HESSIAN, fd_hessian(run.run, run.layout(run.x), run.probes, derive_seed("hutchinson", run.seed),
                                   run.hessian_method, base, run.layers, run.fd_step))


def block_trace_step(run: PassRun):
    """hessian_block_trace: exact block Hessian-vector products on the contiguous batch, like the joint estimate."""
    if HESSIAN not in run.captures:  # no joint estimate: a no-grad forward finds the layers if needed
        order = run.layers if run.layers is not None else [c.layer for c in run.run(run.x, set())[0]]
        run.record(HESSIAN, [Capture(layer) for layer in order])
    try:
        traces = block_hessian_traces(run.model, [l.module.weight for l in run.layers], run.x, run.y, run.probes,
                                      derive_seed(BLOCK_PROBE_TAG, run.seed))
    finally:
        run.restore()
    for cap, value in zip(run.captures[HESSIAN], traces):
        cap.values["hblock"] = value


def run_pass(model, candidates: dict, x, y, needs: frozenset, expected: list | None, safe: bool = False,
             sum_logits: bool = False, hessian=None, recorders=()):
    """One forward (+ backward) of ``model`` on (x, y) with hooks on the Conv2d/Linear modules.

    Each hook makes the layer's :class:`Capture` and calls ``recorders`` ``(capture, layer input, output)`` on it
    (:data:`RECORDERS`); one ``torch.autograd.grad`` after the forward gives the captures' "wgrad" (dL/dW) and
    "ograd" (dL/d(output), full) when ``needs`` has them. The objective is the mean cross-entropy of the logits, or
    with ``sum_logits`` the sum of all logits (EMQ's virtual gradient; ``y`` unused). ``hessian(weight grads,
    weights, captures)``, when given, runs on the weight gradients' graph (:func:`hutchinson_diag`).

    Returns (captures in hook order, loss), or None when a layer output was modified in place later in the
    forward (re-run with ``safe``, which hands a clone of each layer output to the rest of the model).
    """
    caps: list[Capture] = []
    outs: list[tuple[torch.Tensor, int]] = []  # the kept layer outputs and their versions at the hook
    seen: set[int] = set()
    keep_out = "out" in needs or "ograd" in needs

    def hook(module, args, output):
        key = id(module)
        if key in seen:
            raise ExtractionError(f"layer {candidates[key][0]!r} runs more than once per forward; shared layers are not supported")
        seen.add(key)
        name, kind = candidates[key]
        inp = args[0] if args else None
        cap = Capture(LayerInfo(name, kind, module, tuple(inp.shape[1:]) if isinstance(inp, torch.Tensor) else (),
                                tuple(output.shape[1:])))
        for record in recorders:
            record(cap, inp, output)
        caps.append(cap)
        if keep_out:
            outs.append((output, output._version))
            if safe:
                return output.clone()
        return None

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in candidates]
    grad_w = "wgrad" in needs or hessian is not None
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
    if expected is not None and [c.layer.module for c in caps] != expected:
        raise ExtractionError("the set or order of Conv2d/Linear layers changed between passes "
                              "(input-dependent control flow is not supported)")
    if any(o._version != v for o, v in outs):
        if safe:
            raise ExtractionError("a layer output was modified in place even with cloned outputs")
        return None  # caller re-runs in safe mode
    loss_value = float(loss.detach())
    if not (grad_w or grad_o):
        return caps, loss_value
    weights = [c.layer.module.weight for c in caps] if grad_w else []
    grads = torch.autograd.grad(loss, weights + ([o for o, _ in outs] if grad_o else []), allow_unused=True,
                                create_graph=hessian is not None)
    nw = len(weights)
    for i, cap in enumerate(caps):
        if "wgrad" in needs:
            g = grads[i]
            cap.values["wgrad"] = torch.zeros_like(weights[i]).detach() if g is None else g.detach()
        if grad_o:
            g = grads[nw + i]
            cap.values["ograd"] = torch.zeros_like(outs[i][0]).detach() if g is None else g.detach()
    if hessian is not None:
        hessian(grads[:nw], weights, caps)
    del grads, loss, logits
    return caps, loss_value


def hutchinson_diag(grads, weights, caps, probes: int, probe_seed: int) -> None:
    """Each capture's ``hdiag``: the Hutchinson estimate mean_k z_k * (H z_k) of the diagonal of the loss Hessian
    w.r.t. ``weights``, Rademacher probes z spanning all layers jointly (one generator seeded with
    ``probe_seed``), H z by one ``autograd.grad`` of the weight gradients ``grads`` (with their graph) per probe."""
    nw = len(weights)
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
        cap.values["hdiag"] = diag[i].div_(probes)


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

    ``run(xp, needs)`` is one plain gradient pass (buffers restored after it). ``base`` is
    g(w) from the data pass when it can be reused (forward differences only). Same probes z as the
    exact path; the weights are perturbed in place and restored bit-identically from copies.
    Returns one capture per layer (its "hdiag").
    """
    order = layers
    if method == "fd" and base is None:
        caps0, _ = run(xp, {"wgrad"})
        order, base = [c.layer for c in caps0], [c.values["wgrad"] for c in caps0]
    elif order is None:
        order = [c.layer for c in run(xp, set())[0]]  # a no-grad forward, just to find the layers and their order
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
        return [c.values["wgrad"] for c in run(xp, {"wgrad"})[0]]

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
    return [Capture(layer, {"hdiag": d.div_(probes)}) for layer, d in zip(order, diag)]
