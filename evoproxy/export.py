"""Export a proxy file as a standalone Python module that depends only on torch.

    evoproxy export runs/nb_s0/best.json -o my_proxy.py
    import my_proxy
    my_proxy.score(model, inputs, targets)                     # NAS proxy
    my_proxy.score(model, inputs, targets, bit_config=[8, 4, ...])  # MQ proxy: weight bits per layer

The generated module computes exactly the primitives its formula needs, with the conventions of
:func:`primitives.extract` as the evaluator calls it (forward hooks on Conv2d/Linear in forward
order, mean cross-entropy, ``torch.autograd.grad``, spatial means of activations, channels_last
inputs for the input passes, the same seeded generators for noise / perturbation / Hutchinson
probes, one torch thread, the model's own train/eval mode, buffers and ``requires_grad`` restored),
then the formula with the operators of :mod:`evoproxy.ops` (same numerical guards), times the
proxy's orientation. MQ proxies embed the PTQ weight quantizer ``mqbench.quant.quantize_weight``
(its source, so the numbers are identical).

The code is assembled from registries of snippets, one per operator (``OP_SNIPPETS``), per primitive
(``PRIMITIVE_SNIPPETS``) and per helper (``HELPERS``), keeping only what the formula needs (helpers
are pulled in through their declared dependencies). ``tests/test_export.py`` checks every operator
snippet against its :mod:`evoproxy.ops` function and whole exported modules against the engine.
"""
from __future__ import annotations

import inspect
import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from evoproxy import ops
from evoproxy.errors import ConfigError
from evoproxy.ops import OPS
from evoproxy.tree import Node, Proxy, load_proxy, render
from primitives.core import DATA, HESSIAN, NOISE, PASS_ORDER, PERTURB, QUANT, STATIC

LINE = 100  # formula lines are wrapped beyond this width


@dataclass(frozen=True)
class Snippet:
    """Source of one top-level definition of the generated module and the names it uses."""

    code: str
    needs: tuple[str, ...] = ()
    section: str = "primitives"  # where it goes: "operators" or "primitives"


@dataclass(frozen=True)
class PrimSnippet:
    """How the generated module computes one primitive of a layer.

    ``pass_``/``needs``: the pass and what it must record (as in ``primitives.core``); ``setup``: lines
    run once per network before the per-layer loop; ``layer_setup``: lines run per layer (``i``,
    ``name``, ``kind``, ``module``, ``w`` = the weight's detached copy are defined); ``expr``: the
    tensor (``caps[pass][i]`` is the layer's capture dict of that pass); ``helpers``: definitions used.
    """

    pass_: str
    needs: tuple[str, ...] = ()
    expr: str = ""
    setup: tuple[str, ...] = ()
    layer_setup: tuple[str, ...] = ()
    helpers: tuple[str, ...] = ()


# ===================================================================================== helpers
HELPERS: dict[str, Snippet] = {}
CONSTANTS = {  # name -> value (emitted as NAME = repr(value) when some snippet needs it)
    "EPS": ops.EPS, "LOG_FLOOR": ops.LOG_FLOOR, "EXP_CLIP": ops.EXP_CLIP,
    "GRAM_MAX_ROWS": ops.GRAM_MAX_ROWS, "RIDGE": ops.RIDGE,
}


def helper(name: str, code: str, needs: tuple[str, ...] = (), section: str = "primitives") -> None:
    if name in HELPERS:
        raise ValueError(f"helper {name!r} registered twice")
    HELPERS[name] = Snippet(textwrap.dedent(code).strip("\n"), tuple(needs), section)


helper("ProxyError", '''
class ProxyError(ArithmeticError):
    """An operator cannot be applied to these values (``reason``: "shape" or "size"), as evoproxy.ops.OpError."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason
''', section="operators")

helper("_rows", '''
def _rows(x, name):
    if x.dim() == 0:
        raise ProxyError("shape", f"{name} of a 0-d tensor")
    if x.shape[0] > GRAM_MAX_ROWS:
        raise ProxyError("size", f"{name} needs at most {GRAM_MAX_ROWS} rows, got {x.shape[0]}")
    return x.reshape(x.shape[0], -1)
''', ("ProxyError", "GRAM_MAX_ROWS"), "operators")

helper("_same_shape", '''
def _same_shape(a, b, name):
    if a.shape != b.shape and a.numel() != 1 and b.numel() != 1:
        raise ProxyError("shape", f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
''', ("ProxyError",), "operators")

helper("_derive_seed", '''
def _derive_seed(*parts):
    """A 63-bit seed from a tuple of plain values (primitives.core.derive_seed)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
''')

helper("_generator", '''
def _generator(*parts):
    return torch.Generator().manual_seed(_derive_seed(*parts))
''', ("_derive_seed",))

helper("_layout", '''
def _layout(x):
    """Input passes run on channels_last inputs (primitives.extract's default; part of the numerics)."""
    return x.contiguous(memory_format=torch.channels_last) if CHANNELS_LAST and x.dim() == 4 else x
''')

helper("_spatial_mean", '''
def _spatial_mean(t, kind):
    """[N, C, *spatial] -> [N, C] (conv) or [N, *, F] -> [N, F] (linear), by the mean."""
    if t.dim() <= 2:
        return t
    if kind == "conv":
        return t.mean(dim=tuple(range(2, t.dim())))
    return t.mean(dim=tuple(range(1, t.dim() - 1)))
''')

helper("_per_sample_ag", '''
def _per_sample_ag(cap, kind):
    """s[n, c] = sum over spatial positions of a * dL/da on the layer output."""
    if "ag" not in cap:
        prod = cap["out"] * cap["ograd"]
        if prod.dim() > 2:
            dims = tuple(range(2, prod.dim())) if kind == "conv" else tuple(range(1, prod.dim() - 1))
            prod = prod.sum(dim=dims)
        cap["ag"] = prod
    return cap["ag"]
''')

helper("_positions", '''
def _positions(cap, kind):
    t = cap["out"]
    if t.dim() <= 2:
        return 1
    return math.prod(t.shape[2:]) if kind == "conv" else math.prod(t.shape[1:-1])
''')

helper("_run_pass", '''
def _run_pass(model, candidates, x, y, needs, probes, probe_seed, expected, safe=False):
    """One forward (+ one autograd.grad) with hooks on the Conv2d/Linear modules.

    Returns (layers [(name, kind, module)] in hook order, one capture dict per layer), or None when a
    layer output was modified in place later in the forward (the caller re-runs with ``safe``, which
    hands a clone of each output to the rest of the model). ``probes`` > 0 adds the Hutchinson
    diagonal of the weights' Hessian ("hdiag"), probes spanning all layers jointly.
    """
    order, caps, outs, versions, seen = [], [], [], [], set()
    keep_out = "out" in needs or "ograd" in needs

    def hook(module, args, output):
        key = id(module)
        if key in seen:
            raise ValueError(f"layer {candidates[key][0]!r} runs more than once per forward; shared layers are not supported")
        seen.add(key)
        name, kind = candidates[key]
        order.append((name, kind, module))
        cap = {}
        if "act_in" in needs:
            cap["act_in"] = _spatial_mean(args[0].detach(), kind).clone()
        if "act_out" in needs:
            cap["act_out"] = _spatial_mean(output.detach(), kind).clone()
        if keep_out:
            outs.append(output)
            versions.append(output._version)
            if "out" in needs:
                cap["out"] = output.detach()
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
                raise ValueError(f"model returned {type(logits).__name__}, expected a logits tensor")
            loss = F.cross_entropy(logits, y)
    finally:
        for h in handles:
            h.remove()
    if expected is not None and [m for _, _, m in order] != expected:
        raise ValueError("the set or order of Conv2d/Linear layers changed between passes")
    if keep_out and any(o._version != v for o, v in zip(outs, versions)):
        if safe:
            raise ValueError("a layer output was modified in place even with cloned outputs")
        return None
    if not (grad_w or grad_o):
        return order, caps
    weights = [m.weight for _, _, m in order] if grad_w else []
    grads = torch.autograd.grad(loss, weights + (outs if grad_o else []), allow_unused=True, create_graph=probes > 0)
    nw = len(weights)
    for i, cap in enumerate(caps):
        if grad_w and "wgrad" in needs:
            cap["wgrad"] = torch.zeros_like(weights[i]).detach() if grads[i] is None else grads[i].detach()
        if grad_o:
            g = grads[nw + i]
            cap["ograd"] = torch.zeros_like(outs[i]).detach() if g is None else g.detach()
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
            cap["hdiag"] = diag[i].div_(probes)
    return order, caps
''', ("_spatial_mean",))

helper("_block_traces", '''
def _block_traces(model, weights, x, y, probes, probe_seed):
    """Tr(H_ll) per layer by Hutchinson with probes on that layer's weights only (HAWQ-V2): mean over
    ``probes`` Rademacher z_l of z_l . (H_ll z_l), exact block Hessian-vector products, float64 sums."""
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
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
    return out
''')

helper("_block_param_counts", '''
def _block_param_counts(model, layer_names):
    """Trainable parameters per layer: its own, plus those of every other module registered after it
    and before the next Conv2d/Linear (e.g. its BatchNorm); before the first layer -> the first layer."""
    index = {n: i for i, n in enumerate(layer_names)}
    counts = [0] * len(layer_names)
    current, pending, seen = None, 0, set()
    for name, module in model.named_modules():
        if name in index:
            current = index[name]
            counts[current] += pending
            pending = 0
        n = 0
        for p in module.parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        if current is None:
            pending += n
        else:
            counts[current] += n
    return counts
''')

helper("_bits_per_layer", '''
def _bits_per_layer(bit_config, layer_names):
    """Weight bits per layer from a list (forward order) or a dict layer name -> bits."""
    if bit_config is None:
        raise ValueError("this proxy scores a bit configuration: pass bit_config (weight bits per Conv2d/Linear "
                         "in forward order, or a dict layer name -> bits)")
    if isinstance(bit_config, dict):
        unknown = [k for k in bit_config if k not in layer_names]
        missing = [n for n in layer_names if n not in bit_config]
        if unknown or missing:
            raise ValueError(f"bit_config: unknown layer(s) {unknown[:5]}, missing layer(s) {missing[:5]}; "
                             f"the layers are {layer_names}")
        bits = [bit_config[n] for n in layer_names]
    else:
        bits = list(bit_config)
        if len(bits) != len(layer_names):
            raise ValueError(f"bit_config has {len(bits)} entries but the model has {len(layer_names)} "
                             f"Conv2d/Linear layers (in forward order)")
    for b in bits:
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 32:
            raise ValueError(f"bit-widths must be integers in 1..32, got {b!r}")
    return [int(b) for b in bits]
''')


def _quantizer_code() -> str:
    """mqbench.quant's weight quantizer, from its source (so the numbers are the PTQ tables' own)."""
    import torch

    from mqbench import quant

    if not torch.equal(quant.CLIP_GRID, torch.linspace(0.30, 1.0, 36)):
        grid = "torch.tensor(" + repr([float(v) for v in quant.CLIP_GRID]) + ", dtype=torch.float32)"
    else:
        grid = "torch.linspace(0.30, 1.0, 36)"
    parts = [f"CLIP_GRID = {grid}  # clipping ratios searched per channel (mqbench.quant.CLIP_GRID)",
             inspect.getsource(quant.weight_levels).strip("\n"), inspect.getsource(quant.quantize_weight).strip("\n")]
    return "\n\n\n".join(parts)


helper("quantize_weight", _quantizer_code())


# ===================================================================================== operators
OP_SNIPPETS: dict[str, Snippet] = {}


def op_snippet(name: str, body: str, needs: tuple[str, ...] = ()) -> None:
    """Register the generated code of operator ``name``: ``def op_<name>(<args>):`` + its docstring
    (from :mod:`evoproxy.ops`) + ``body``."""
    if name not in OPS:
        raise ValueError(f"no operator {name!r} in evoproxy.ops")
    if name in OP_SNIPPETS:
        raise ValueError(f"operator snippet {name!r} registered twice")
    op = OPS[name]
    args = {"aggregate": "values, weights"}.get(op.kind, "x" if op.arity == 1 else "a, b")
    doc = op.doc.replace("\\", "\\\\").replace('"""', "'''")
    code = f'def op_{name}({args}):\n    """{doc}"""\n' + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ")
    OP_SNIPPETS[name] = Snippet(code, tuple(needs))


# unary tensor
op_snippet("abs", "return x.abs()")
op_snippet("neg", "return -x")
op_snippet("square", "return x * x")
op_snippet("sqrt", "return x.abs().sqrt()")
op_snippet("log", "return x.abs().clamp_min(LOG_FLOOR).log()", ("LOG_FLOOR",))
op_snippet("exp", "return x.clamp_max(EXP_CLIP).exp()", ("EXP_CLIP",))
op_snippet("relu", "return x.clamp_min(0)")
op_snippet("sign", "return x.sign()")
op_snippet("sigmoid", "return torch.sigmoid(x)")
op_snippet("tanh", "return torch.tanh(x)")
op_snippet("softmax", "return torch.softmax(x.reshape(-1), dim=0).reshape(x.shape)")
op_snippet("inv", "return 1.0 / (x + torch.where(x >= 0, EPS, -EPS))", ("EPS",))
op_snippet("znorm", """
    if x.numel() < 2:
        return torch.zeros_like(x)
    return (x - x.mean()) / (x.std() + EPS)
""", ("EPS",))
op_snippet("minmax", """
    if x.numel() == 0:
        raise ProxyError("shape", "minmax of an empty tensor")
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo + EPS)
""", ("EPS", "ProxyError"))
op_snippet("gram", """
    rows = _rows(x, "gram")
    return rows @ rows.T
""", ("_rows",))
op_snippet("batch_mean", """
    if x.dim() < 2:
        raise ProxyError("shape", f"batch_mean needs >= 2 dims, got shape {tuple(x.shape)}")
    return x.mean(dim=0)
""", ("ProxyError",))
op_snippet("batch_std", """
    if x.dim() < 2 or x.shape[0] < 2:
        raise ProxyError("shape", f"batch_std needs >= 2 dims and >= 2 rows, got shape {tuple(x.shape)}")
    return x.std(dim=0)
""", ("ProxyError",))
# binary tensor
op_snippet("add", """
    _same_shape(a, b, "add")
    return a + b
""", ("_same_shape",))
op_snippet("sub", """
    _same_shape(a, b, "sub")
    return a - b
""", ("_same_shape",))
op_snippet("mul", """
    _same_shape(a, b, "mul")
    return a * b
""", ("_same_shape",))
op_snippet("div", """
    _same_shape(a, b, "div")
    return a * op_inv(b)
""", ("_same_shape", "op_inv"))
op_snippet("matmul", """
    ra, rb = _rows(a, "matmul"), _rows(b, "matmul")
    if ra.shape[1] != rb.shape[1]:
        raise ProxyError("shape", f"matmul: row lengths {ra.shape[1]} and {rb.shape[1]} differ")
    return ra @ rb.T
""", ("_rows", "ProxyError"))
# layer reductions (float64)
op_snippet("mean", """
    if x.numel() == 0:
        raise ProxyError("shape", "mean of an empty tensor")
    return float(x.double().mean())
""", ("ProxyError",))
op_snippet("sum", "return float(x.double().sum())")
op_snippet("l1", "return float(x.double().abs().sum())")
op_snippet("fro", "return float(x.double().pow(2).sum().sqrt())")
op_snippet("std", """
    if x.numel() < 2:
        return 0.0
    return float(x.double().std())
""")
op_snippet("numel", "return float(x.numel())")
op_snippet("max", """
    if x.numel() == 0:
        raise ProxyError("shape", "max of an empty tensor")
    return float(x.max())
""", ("ProxyError",))
op_snippet("min", """
    if x.numel() == 0:
        raise ProxyError("shape", "min of an empty tensor")
    return float(x.min())
""", ("ProxyError",))
op_snippet("logdet", """
    rows = _rows(x, "logdet").double()
    k = rows @ rows.T
    n = k.shape[0]
    ridge = RIDGE * float(torch.trace(k)) / n
    sign, value = torch.linalg.slogdet(k + ridge * torch.eye(n, dtype=k.dtype))
    return float(value) if float(sign) > 0 else math.nan
""", ("_rows", "RIDGE"))
# layer binary
op_snippet("ladd", "return a + b")
op_snippet("lsub", "return a - b")
op_snippet("lmul", "return a * b")
op_snippet("ldiv", "return a / (b + (EPS if b >= 0 else -EPS))", ("EPS",))
# aggregations over layers: values = one float per layer, weights = each layer's weight count
op_snippet("layer_sum", "return float(torch.tensor(values, dtype=torch.float64).sum())")
op_snippet("layer_mean", "return float(torch.tensor(values, dtype=torch.float64).mean())")
op_snippet("layer_meanlog", """
    v = torch.tensor(values, dtype=torch.float64)
    return float(v.abs().clamp_min(LOG_FLOOR).log().mean())
""", ("LOG_FLOOR",))
op_snippet("layer_pweighted", """
    v = torch.tensor(values, dtype=torch.float64)
    w = torch.tensor(weights, dtype=torch.float64)
    return float((v * w).sum() / w.sum())
""")
# net binary
op_snippet("nadd", "return a + b")
op_snippet("nsub", "return a - b")
op_snippet("nmul", "return a * b")
op_snippet("ndiv", "return a / (b + (EPS if b >= 0 else -EPS))", ("EPS",))


# ===================================================================================== primitives
PRIMITIVE_SNIPPETS: dict[str, PrimSnippet] = {}
_BITS = ("bits = _bits_per_layer(bit_config, [n for n, _, _ in order])",)
_WQ = ("wq = quantize_weight(w, bits[i]).detach().to(w.dtype)",)


def prim_snippet(name: str, snippet: PrimSnippet) -> None:
    if name in PRIMITIVE_SNIPPETS:
        raise ValueError(f"primitive snippet {name!r} registered twice")
    PRIMITIVE_SNIPPETS[name] = snippet


prim_snippet("weight", PrimSnippet(STATIC, expr="w"))
prim_snippet("params", PrimSnippet(
    STATIC, expr="torch.tensor(block_params[i], dtype=torch.int64)",
    setup=("block_params = _block_param_counts(model, [n for n, _, _ in order])",), helpers=("_block_param_counts",)))
for _pass, _suffix in ((DATA, ""), (NOISE, "@noise"), (PERTURB, "@perturb")):
    _cap = f'caps["{_pass}"][i]'
    prim_snippet(f"weight_grad{_suffix}", PrimSnippet(_pass, ("wgrad",), f'{_cap}["wgrad"]'))
    prim_snippet(f"act_out{_suffix}", PrimSnippet(_pass, ("act_out",), f'{_cap}["act_out"]'))
    prim_snippet(f"act_grad{_suffix}", PrimSnippet(_pass, ("ograd",), f'_spatial_mean({_cap}["ograd"], kind)',
                                                   helpers=("_spatial_mean",)))
prim_snippet("act_in", PrimSnippet(DATA, ("act_in",), 'caps["data"][i]["act_in"]'))
prim_snippet("fisher", PrimSnippet(DATA, ("out", "ograd"), '0.5 * _per_sample_ag(caps["data"][i], kind).pow(2).sum(dim=0)',
                                   helpers=("_per_sample_ag",)))
prim_snippet("act_x_grad", PrimSnippet(
    DATA, ("out", "ograd"),
    '_per_sample_ag(caps["data"][i], kind).sum(dim=0) / (caps["data"][i]["out"].shape[0] * _positions(caps["data"][i], kind))',
    helpers=("_per_sample_ag", "_positions")))
prim_snippet("hessian_diag", PrimSnippet(HESSIAN, ("hdiag",), 'caps["hessian"][i]["hdiag"]'))
prim_snippet("hessian_trace", PrimSnippet(HESSIAN, ("hdiag",), 'caps["hessian"][i]["hdiag"].sum()'))
prim_snippet("hessian_block_trace", PrimSnippet(HESSIAN, ("hblock",), 'torch.tensor(caps["hessian"][i]["hblock"], dtype=w.dtype)',
                                                helpers=("_block_traces",)))
prim_snippet("weight_q", PrimSnippet(QUANT, expr="wq", setup=_BITS, layer_setup=_WQ,
                                     helpers=("_bits_per_layer", "quantize_weight")))
prim_snippet("quant_error", PrimSnippet(QUANT, expr="w - wq", setup=_BITS, layer_setup=_WQ,
                                        helpers=("_bits_per_layer", "quantize_weight")))
prim_snippet("bitwidth", PrimSnippet(QUANT, expr="torch.tensor(int(bits[i]), dtype=torch.int32)", setup=_BITS,
                                     helpers=("_bits_per_layer",)))
prim_snippet("size_mb", PrimSnippet(
    QUANT, expr="torch.tensor((w.numel() * int(bits[i]) + (module.bias.numel() if module.bias is not None else 0) * 32)"
                " / 8 / 2 ** 20, dtype=torch.float64)", setup=_BITS, helpers=("_bits_per_layer",)))

PASS_COMMENTS = {
    DATA: "data pass (the batch, channels_last)",
    NOISE: "noise pass (N(0, 1) inputs of the batch's shape, channels_last)",
    PERTURB: "perturb pass (the batch + NOISE_STD * N(0, 1), channels_last)",
}
PASS_INPUTS = {
    DATA: "x",
    NOISE: 'torch.randn(x.shape, generator=_generator("noise", seed), dtype=x.dtype).to(x.device)',
    PERTURB: 'x + NOISE_STD * torch.randn(x.shape, generator=_generator("perturb", seed), dtype=x.dtype).to(x.device)',
}


# ===================================================================================== assembly
def _check_exportable(proxy: Proxy) -> None:
    missing_ops = sorted({n.name for n in _nodes(proxy.tree) if not n.is_terminal} - set(OP_SNIPPETS))
    missing_prims = sorted(proxy.tree.terminals() - set(PRIMITIVE_SNIPPETS))
    if missing_ops or missing_prims:
        raise ConfigError(f"{proxy.source or 'proxy'}: cannot export operator(s)/primitive(s) "
                          f"{', '.join(missing_ops + missing_prims)} (no snippet in evoproxy.export)")


def _nodes(node: Node):
    yield node
    for c in node.children:
        yield from _nodes(c)


def _flat(node: Node) -> str:
    if node.is_terminal:
        return f'P["{node.name}"]'
    return f"op_{node.name}({', '.join(_flat(c) for c in node.children)})"


def _fmt(node: Node, indent: int) -> str:
    """The layer-level expression of ``node``, wrapped (one argument per line) where it is too long."""
    flat = _flat(node)
    if node.is_terminal or indent + len(flat) <= LINE:
        return flat
    pad = " " * (indent + 4)
    parts = [pad + _fmt(c, indent + 4) for c in node.children]
    return f"op_{node.name}(\n" + ",\n".join(parts) + ",\n" + " " * indent + ")"


def _safe_doc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', "'''")


def _formula_code(tree: Node) -> tuple[str, list[str]]:
    """(code of the term functions and ``formula``, operator names used)."""
    terms: list[str] = []
    used: list[str] = []
    for n in _nodes(tree):
        if not n.is_terminal and n.name not in used:
            used.append(n.name)

    def net(node: Node, indent: int) -> str:
        op = OPS[node.name]
        if op.kind == "aggregate":
            k = len(terms)
            body = _fmt(node.children[0], 4)
            terms.append(f'def term_{k}(P):\n    """{_safe_doc(render(node.children[0]))}"""\n    return {body}')
            return f"op_{node.name}([term_{k}(P) for P in layers], counts)"
        a, b = (net(c, indent + 4) for c in node.children)
        flat = f"op_{node.name}({a}, {b})"
        if indent + len(flat) <= LINE:
            return flat
        pad = " " * (indent + 4)
        return f"op_{node.name}(\n{pad}{a},\n{pad}{b},\n" + " " * indent + ")"

    expr = net(tree, 8)
    formula = (f'def formula(layers, counts):\n    """{_safe_doc(render(tree))}\n\n'
               f'    ``layers``: one dict {{primitive name: float32 tensor}} per layer, ``counts``: each layer\'s weight\n'
               f'    count. Returns the tree\'s value (before the orientation)."""\n'
               f"    with torch.no_grad():\n        return {expr}")
    return "\n\n\n".join(terms + [formula]), used


def _primitives_code(names: list[str]) -> tuple[str, list[str], dict]:
    """(code of ``_primitives``, helper names used, {pass: needs})."""
    snippets = {n: PRIMITIVE_SNIPPETS[n] for n in names}
    passes: dict[str, set] = {}
    helpers: list[str] = []
    for s in snippets.values():
        if s.pass_ in PASS_ORDER:
            passes.setdefault(s.pass_, set()).update(s.needs)
        helpers += [h for h in s.helpers if h not in helpers]
    lines = []
    input_passes = [p for p in (DATA, NOISE, PERTURB) if p in passes]
    for p in input_passes:
        users = ", ".join(n for n in names if snippets[n].pass_ == p)
        needs = "{" + ", ".join(f'"{k}"' for k in sorted(passes[p])) + "}" if passes[p] else "set()"
        lines.append(f"# {PASS_COMMENTS[p]}: {users}")
        if p == DATA:
            lines.append(f'order, caps["{p}"] = run(_layout(x), {needs})')
        else:
            lines.append(f"xp = {PASS_INPUTS[p]}")
            lines.append(f'order, caps["{p}"] = run(_layout(xp), {needs})')
    if HESSIAN in passes:
        users = ", ".join(n for n in names if snippets[n].pass_ == HESSIAN)
        if "hdiag" in passes[HESSIAN]:
            lines.append(f"# Hessian pass (the batch, default layout; joint Rademacher probes): {users}")
            lines.append('order, caps["hessian"] = run(x, set(), HUTCHINSON_PROBES)')
        else:
            lines.append(f"# Hessian pass (the batch, default layout): {users}")
            lines.append("if order is None:  # a no-grad forward finds the layers")
            lines.append("    order, _ = run(x, set())")
            lines.append('caps["hessian"] = [{} for _ in order]')
        if "hblock" in passes[HESSIAN]:
            lines += ["try:  # one block Hessian-vector product per layer and probe",
                      "    traces = _block_traces(model, [m.weight for _, _, m in order], x, y, HUTCHINSON_PROBES,",
                      '                           _derive_seed("hawq_v2", seed))',
                      "finally:",
                      "    for b, saved in buffers:",
                      "        b.data.copy_(saved)",
                      'for cap, value in zip(caps["hessian"], traces):',
                      '    cap["hblock"] = value']
    if not passes:
        lines.append("# a no-grad forward on the batch finds the layers and their order")
        lines.append("order, _ = run(_layout(x), set())")
    setup, layer_setup = [], []
    for s in snippets.values():
        setup += [l for l in s.setup if l not in setup]
        layer_setup += [l for l in s.layer_setup if l not in layer_setup]
    body_passes = textwrap.indent("\n".join(lines), " " * 8)
    per_layer = "\n".join(f"        {l}" for l in layer_setup)
    per_layer += ("\n" if per_layer else "") + "\n".join(f'        P["{n}"] = {snippets[n].expr}' for n in names)
    setup_code = "".join(f"    {l}\n" for l in setup)
    helpers_needed = helpers + ["_run_pass", "_derive_seed"]  # run() is always defined
    if input_passes or not passes:
        helpers_needed.append("_layout")
    if NOISE in passes or PERTURB in passes:
        helpers_needed.append("_generator")
    code = f'''def _primitives(model, inputs, targets, bit_config, seed):
    candidates = {{}}
    for name, module in model.named_modules():
        kind = "conv" if isinstance(module, nn.Conv2d) else "linear" if isinstance(module, nn.Linear) else None
        if kind is not None and id(module) not in candidates:
            candidates[id(module)] = (name, kind)
    if not candidates:
        raise ValueError("the model has no nn.Conv2d or nn.Linear layer")
    param = next(iter(model.parameters()))
    x = inputs.to(param.device)
    if x.is_floating_point():
        x = x.to(param.dtype)
    y = targets.to(device=param.device, dtype=torch.long)
    buffers = [(b, b.detach().clone()) for b in model.buffers()]  # restored after every pass
    grad_flags = [(m.weight, m.weight.requires_grad) for m in model.modules() if id(m) in candidates]
    for w, _ in grad_flags:
        w.requires_grad_(True)
    order, caps = None, {{}}

    def run(xp, needs, probes=0):
        expected = None if order is None else [m for _, _, m in order]
        for safe in (False, True):
            try:
                result = _run_pass(model, candidates, xp, y, needs, probes, _derive_seed("hutchinson", seed),
                                   expected, safe)
            finally:
                for b, saved in buffers:
                    b.data.copy_(saved)
            if result is not None:
                return result
        raise AssertionError("unreachable")

    try:
{body_passes}
    finally:
        for w, flag in grad_flags:
            w.requires_grad_(flag)
{setup_code}    layers, counts = [], []
    for i, (name, kind, module) in enumerate(order):
        w = module.weight.detach().clone()
        P = {{}}
{per_layer}
        layers.append({{k: v if v.dtype == torch.float32 else v.float() for k, v in P.items()}})
        counts.append(math.prod(module.weight.shape))
    return layers, counts'''
    return code, helpers_needed, passes


def _resolve(names: list[str]) -> list[str]:
    """``names`` plus their dependencies (helpers, constants, operator functions), in emission order."""
    seen: set[str] = set()

    def visit(n: str) -> None:
        if n in seen:
            return
        seen.add(n)
        snip = HELPERS.get(n) or (OP_SNIPPETS.get(n[3:]) if n.startswith("op_") else None)
        for d in (snip.needs if snip else ()):
            visit(d)

    for n in names:
        visit(n)
    ordered = [c for c in CONSTANTS if c in seen] + [h for h in HELPERS if h in seen]
    ordered += [f"op_{o}" for o in OPS if f"op_{o}" in seen]
    return ordered


def _docstring(proxy: Proxy, module_name: str, names: list[str], passes: dict, needs_bits: bool) -> str:
    src = proxy.source or "a proxy tree"
    prim_lines = []
    for n in names:
        p = PRIMITIVE_SNIPPETS[n].pass_
        prim_lines.append(f"    {n:<22} ({p})")
    settings = ["seed 0", "one torch thread"]
    if any(p in passes for p in (DATA, NOISE, PERTURB)) or not passes:
        settings.append("channels_last inputs for the input passes")
    if any(p in passes for p in (NOISE, PERTURB)):
        settings.append(f"noise_std {proxy.primitives.get('noise_std', 0.01)}")
    if HESSIAN in passes:
        settings.append(f"{proxy.primitives.get('hutchinson_probes', 0)} Hutchinson probes")
    search = ""
    if proxy.search:
        items = ", ".join(f"{k} {v}" for k, v in proxy.search.items() if not isinstance(v, (dict, list)))
        search = "\n".join(textwrap.wrap(f"Search: {items}.", 96)) + "\n"
    call = "score(model, inputs, targets, bit_config)" if needs_bits else "score(model, inputs, targets)"
    args_text = ("``model``: a torch.nn.Module in the mode it is to be scored in (evoproxy scores NAS networks in "
                 "train mode, pretrained quantized ones in eval mode); ``inputs`` [N, ...] a batch and ``targets`` "
                 "[N] its class labels" + ("; ``bit_config``: weight bits of the Conv2d/Linear layers in forward "
                                           "order (a list), or a dict layer name -> bits." if needs_bits else
                                           " (``bit_config`` is not used by this proxy)."))
    args_text = "\n".join(textwrap.wrap(args_text, 100))
    orient = ("+1: the score is the formula's value" if proxy.orientation == 1
              else "-1: the score is minus the formula's value")
    orient_text = "\n".join(textwrap.wrap(f"Orientation {orient}; higher scores predict more accurate "
                                          f"{'bit configurations' if needs_bits else 'networks'}.", 100))
    text = f'''{module_name}: a training-free proxy exported by evoproxy from {src}.

    score = {proxy.formula}

LaTeX: {proxy.latex()}

{orient_text}
{search}
Usage::

    import {module_name}
    value = {module_name}.{call}

{args_text}

Primitives (per Conv2d/Linear layer, forward order; as evoproxy's primitives.extract computes them,
settings: {", ".join(settings)}):
{chr(10).join(prim_lines)}

Conventions: mean cross-entropy of the logits, gradients by torch.autograd.grad, activations
averaged over spatial positions ([N, C]), the model's train/eval mode as given; weights, buffers and
requires_grad flags are left as they were. Depends only on torch.
'''
    return text


def export_source(proxy: Proxy, module_name: str = "proxy") -> str:
    """The source of a standalone module scoring ``proxy`` (see the module docstring)."""
    _check_exportable(proxy)
    names = [n for n in PRIMITIVE_SNIPPETS if n in proxy.tree.terminals()]
    formula_code, used_ops = _formula_code(proxy.tree)
    prim_code, helpers_needed, passes = _primitives_code(names)
    needs_bits = any(PRIMITIVE_SNIPPETS[n].pass_ == QUANT for n in names)
    defs = _resolve(helpers_needed + [f"op_{o}" for o in used_ops])
    consts = [f"{c} = {CONSTANTS[c]!r}" for c in defs if c in CONSTANTS]
    bodies = [HELPERS[d].code for d in defs if d in HELPERS and HELPERS[d].section == "primitives"]
    op_bodies = [HELPERS[d].code for d in defs if d in HELPERS and HELPERS[d].section == "operators"]
    op_bodies += [OP_SNIPPETS[d[3:]].code for d in defs if d.startswith("op_")]
    doc = _docstring(proxy, module_name, names, passes, needs_bits)
    imports = ["import hashlib\n" if "_derive_seed" in defs else "", "import math\n\n",
               "import torch\nimport torch.nn as nn\n",
               "import torch.nn.functional as F\n" if {"_run_pass", "_block_traces"} & set(defs) else ""]
    settings = [
        f"TREE = {json.dumps(proxy.tree.to_json(), ensure_ascii=False)}  # evoproxy.proxy/1 form",
        f"ORIENTATION = {proxy.orientation}",
        "SEED = 0  # seeds the noise / perturbation / Hutchinson generators (the evaluator's PROXY_SEED)",
        "THREADS = 1  # torch intra-op threads while computing (results depend on it at float32 rounding)",
    ]
    if "_layout" in defs:
        settings.append("CHANNELS_LAST = True  # input passes on channels_last inputs (primitives.extract's default)")
    if NOISE in passes or PERTURB in passes:
        settings.append(f"NOISE_STD = {float(proxy.primitives.get('noise_std', 0.01))!r}")
    if HESSIAN in passes:
        settings.append(f"HUTCHINSON_PROBES = {int(proxy.primitives.get('hutchinson_probes', 0))}")
    settings.append("PRIMITIVES = (" + ", ".join(f'"{n}"' for n in names) + ("," if len(names) == 1 else "") + ")")
    score_doc = ("ORIENTATION * formula(primitives(...)): higher predicts a more accurate "
                 + ("bit configuration." if needs_bits else "network."))
    api = f'''def score(model, inputs, targets, bit_config=None, *, seed=SEED):
    """{score_doc}"""
    layers, counts = primitives(model, inputs, targets, bit_config, seed=seed)
    return ORIENTATION * formula(layers, counts)


def primitives(model, inputs, targets, bit_config=None, *, seed=SEED):
    """(per layer {{primitive: float32 tensor}} for PRIMITIVES, per layer weight count), forward order."""
    old = torch.get_num_threads()
    if old != THREADS:
        torch.set_num_threads(THREADS)
    try:
        return _primitives(model, inputs, targets, bit_config, int(seed))
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)'''
    sections = [
        'r"""' + doc + '"""\n' + "".join(imports).rstrip("\n") + "\n\n" + "\n".join(settings + consts),
        "# " + "-" * 86 + " formula\n" + formula_code,
        api,
        "# " + "-" * 86 + " operators (evoproxy.ops)\n" + "\n\n\n".join(op_bodies),
        "# " + "-" * 86 + " primitives (primitives.extract)\n" + "\n\n\n".join(bodies + [prim_code]),
    ]
    return "\n\n\n".join(sections) + "\n"


def operators_source(names=None) -> str:
    """Source defining ``op_<name>`` for the given operators (all by default) with their helpers and
    constants, after ``import math, torch`` (used by the tests to check each snippet against evoproxy.ops)."""
    names = list(OPS) if names is None else list(names)
    defs = _resolve([f"op_{n}" for n in names])
    parts = ["import math\n\nimport torch"]
    parts += [f"{c} = {CONSTANTS[c]!r}" for c in defs if c in CONSTANTS]
    parts += [HELPERS[d].code for d in defs if d in HELPERS]
    parts += [OP_SNIPPETS[d[3:]].code for d in defs if d.startswith("op_")]
    return "\n\n\n".join(parts) + "\n"


MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def export_file(path: str | Path, out: str | Path | None = None) -> str:
    """Export the proxy file ``path``; writes ``out`` when given, returns the source."""
    proxy = load_proxy(path)
    name = Path(out).stem if out is not None else Path(path).stem
    if not MODULE_NAME.match(name):
        name = "proxy"
    source = export_source(proxy, name)
    if out is not None:
        out = Path(out)
        if not out.parent.is_dir():
            raise ConfigError(f"output folder {out.parent} does not exist")
        try:
            out.write_text(source)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc}") from None
    return source


__all__ = ["export_source", "export_file", "operators_source", "OP_SNIPPETS", "PRIMITIVE_SNIPPETS", "HELPERS"]
