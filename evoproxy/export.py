"""Export a proxy file as a standalone Python module that depends only on torch (and the standard library).

    evoproxy export runs/nb_s0/best.json -o my_proxy.py
    import my_proxy
    my_proxy.score(model, inputs, targets)                     # NAS proxy
    my_proxy.score(model, inputs, targets, bit_config=[8, 4, ...])  # MQ proxy: weight bits per layer

The generated module states the proxy first: its settings, ``score``, ``formula`` (the tree as straight-line
torch code, one assignment per node: :func:`evoproxy.codegen.formula_lines`) and ``primitives`` (the pass steps
and forward recorders its primitives need, :func:`primitives.passes.pass_steps` and ``pass_recorders``, and their
primitive functions, each called on what its pass recorded or on the layer). Below follows the
library's own code that these reach (:func:`evoproxy.codegen.pick`) from the torch-only kernel modules
(``KERNELS``: passes, primitive functions, operator kernels, the PTQ quantizer), plus the source of any
registered operator defined elsewhere. Nothing numeric is written here, so the generated module computes what
``primitives.extract`` and ``Proxy.score`` compute (same passes, seeds, layouts, one torch thread, float32
terminals, the same kernels).
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

from evoproxy.codegen import KERNELS, formula_lines, function_ref, names_used, pick
from evoproxy.errors import ConfigError
from evoproxy.language.ops import OPS
from evoproxy.language.opkernels import LAYER_TERMS
from evoproxy.language.tree import Proxy, load_proxy, render_json
from primitives.core import HESSIAN, INPUT_PASSES, QUANT, REGISTRY, STATIC, pass_needs
from primitives.kernels import DATA
from primitives.passes import pass_recorders, pass_steps


def _check_exportable(proxy: Proxy) -> None:
    unknown = sorted(proxy.tree.terminals() - set(REGISTRY))
    if unknown:
        raise ConfigError(f"{proxy.source or 'proxy'}: cannot export unknown primitive(s) {', '.join(unknown)}")


def _operator_names(tree) -> list[str]:
    """The operators of a JSON tree, first use first."""
    if isinstance(tree, str):
        return []
    return list(dict.fromkeys([tree[0]] + [n for child in tree[1:] for n in _operator_names(child)]))


def _docstring(proxy: Proxy, module_name: str, names: list[str], needs_bits: bool) -> str:
    call = "score(model, inputs, targets, bit_config)" if needs_bits else "score(model, inputs, targets)"
    orient = "the formula's value" if proxy.orientation == 1 else "minus the formula's value"
    usage = (f"``{module_name}.{call}`` is {orient} (orientation {proxy.orientation}), higher for a "
             f"{'bit configuration' if needs_bits else 'network'} predicted more accurate. ``model``: a torch.nn.Module "
             "in the mode to score it in (NAS networks in train mode, pretrained quantized ones in eval mode); "
             "``inputs`` [N, ...] a batch, ``targets`` [N] its class labels"
             + ("; ``bit_config``: weight bits of the Conv2d/Linear layers in forward order (a list), or a dict "
                "layer name -> bits." if needs_bits else "."))
    passes = pass_needs(names)
    settings = ["seed 0", "one torch thread", "channels_last inputs"]
    if any(p in passes for p in INPUT_PASSES[1:]):
        settings.append(f"noise_std {float(proxy.extraction.get('noise_std', 0.01))}")
    if HESSIAN in passes:
        settings.append(f"{int(proxy.extraction.get('hutchinson_probes', 0))} Hutchinson probes")
    prims = ", ".join(f"{n} ({REGISTRY[n].pass_})" for n in names)
    how = (f"Primitives per Conv2d/Linear layer in forward order, as primitives.extract computes them: {prims}; "
           f"{', '.join(settings)}; weights, buffers and requires_grad flags are left as they were. Needs only torch.")
    search = ", ".join(f"{k} {v}" for k, v in proxy.search.items() if v is not None and not isinstance(v, (dict, list)))
    paragraphs = [usage, how] + ([f"Search: {search}."] if search else [])
    return (f"{module_name}: a training-free proxy exported by evoproxy from {proxy.source or 'a proxy tree'}.\n\n"
            f"    score = {proxy.formula}\n\nLaTeX: {proxy.latex()}\n\n"
            + "\n\n".join(textwrap.fill(p, 110) for p in paragraphs) + "\n")


TEMPLATE = '''{settings}


def score(model, inputs, targets, bit_config=None, *, seed=SEED):
    """ORIENTATION * formula(...) on the model's primitives: higher predicts a more accurate {what}."""
    return ORIENTATION * formula(*primitives(model, inputs, targets{bits}, seed=seed))


def formula(layers, counts{names}):
    """{formula_doc}"""
    with torch.no_grad():
{body}
    return float({result}[0])


def primitives(model, inputs, targets{bits}, *, seed=SEED):
    """(per layer {{primitive name: tensor}}, per layer weight count{names_doc}), in forward order."""
{bits_check}    with fixed_threads(THREADS):
        x, y = prepare_batch(model, inputs, targets)
        run = PassRun(model, layer_candidates(model), x, y, PASSES, {run_args})
        layers, captures, _ = run_steps(run, [{steps}])
{contexts}        values = [{{{prims}}} for i in range(len(layers))]
    counts = [math.prod(l.module.weight.shape) for l in layers]
    return values, counts{positions}'''
BITS_CHECK = '''    if bit_config is None:
        raise ValueError("this proxy scores a bit configuration: pass bit_config (weight bits per Conv2d/Linear "
                         "in forward order, or a dict layer name -> bits)")
    validate_bit_values(bit_config)
'''


def _settings(proxy: Proxy, passes: dict) -> list[str]:
    sets = ", ".join(f'"{p}": ' + ("{" + ", ".join(f'"{n}"' for n in sorted(needs)) + "}" if needs else "set()")
                     for p, needs in passes.items())
    out = [f"ORIENTATION = {proxy.orientation}",
           "SEED = 0  # seeds the noise / perturbation / Hutchinson generators (the evaluator's PROXY_SEED)",
           "THREADS = 1  # torch intra-op threads while computing (results depend on it at float32 rounding)"]
    if any(p in passes for p in INPUT_PASSES[1:]):
        out.append(f"NOISE_STD = {float(proxy.extraction.get('noise_std', 0.01))!r}")
    if HESSIAN in passes:
        out.append(f"HUTCHINSON_PROBES = {int(proxy.extraction.get('hutchinson_probes', 0))}")
    out.append(f"PASSES = {{{sets}}}  # pass -> what it records")
    weights = proxy.layer_weights
    if weights:
        out += ["# evoproxy calibrate: layer position (layer_position) -> weight of its term in the root's sum",
                _packed("LAYER_WEIGHTS = {", [f"{k!r}: {v!r}" for k, v in weights["weights"].items()], "}"),
                f"LAYER_WEIGHT_DEFAULT = {float(weights.get('default', 1.0))!r}"]
    return out


def _run_args(passes: dict) -> str:
    """The PassRun settings the passes use (the others keep their defaults)."""
    args = ["seed=int(seed)"]
    if any(p in passes for p in INPUT_PASSES[1:]):
        args.append("noise_std=NOISE_STD")
    if HESSIAN in passes:
        args.append("probes=HUTCHINSON_PROBES")
    recorders = pass_recorders(passes)
    if recorders:
        args.append("recorders={" + ", ".join(f'"{p}": ({", ".join(fn.__name__ for fn in fns)},)'
                                              for p, fns in recorders.items()) + "}")
    return ", ".join(args)


def _packed(start: str, items: list[str], end: str, indent: str = "    ", width: int = 120) -> str:
    """``start``, ``items`` joined by ", " (as many per line as fit in ``width``, continuation lines indented), ``end``."""
    lines, first = [start], True
    for item in items:
        if not first and len(lines[-1]) + len(item) + 2 > width:
            lines[-1] += ","
            lines.append(indent)
        elif not first:
            lines[-1] += ", "
        lines[-1] += item
        first = False
    return "\n".join(lines) + end


def _proxy_code(proxy: Proxy, names: list[str], needs_bits: bool, outside: dict) -> str:
    """The generated module's own part: settings, ``score``, ``formula`` and ``primitives``."""
    tree = proxy.tree.to_json()
    passes = pass_needs(names) or {DATA: set()}  # no pass needed: one no-grad forward finds the layers
    refs = {n: function_ref(OPS[n].fn, f"operator {n!r}", outside) for n in _operator_names(tree)}
    weighted = bool(proxy.layer_weights)
    body, result = formula_lines(tree, refs, LAYER_TERMS[OPS[tree[0]].fn].__name__ if weighted else None)

    def value(n: str) -> str:  # a pass's primitive is a function of its capture, the others of the layer
        source = "contexts[i]" if REGISTRY[n].pass_ in (STATIC, QUANT) else f'captures["{REGISTRY[n].pass_}"][i]'
        return f'"{n}": owned({function_ref(REGISTRY[n].fn, f"primitive {n!r}", outside)}({source}))'

    contexts = ""
    if any(REGISTRY[n].pass_ in (STATIC, QUANT) for n in names):
        bits = "bits_per_layer(bit_config, [l.name for l in layers])" if needs_bits else "[None] * len(layers)"
        contexts = f"        contexts = layer_contexts(model, layers, {bits}, {'quantize_weight' if needs_bits else None})\n"
    formula_doc = textwrap.fill(
        f"{render_json(tree)} (before the orientation) on one network: ``layers`` one dict {{primitive name: tensor}} per "
        "layer, ``counts`` each layer's weight count"
        + (", ``names`` each layer's position key (layer_position)." if weighted else "."), 110,
        initial_indent='    """', subsequent_indent="    ")[7:]
    return TEMPLATE.format(
        settings="\n".join(_settings(proxy, passes)), what="bit configuration" if needs_bits else "network",
        bits=", bit_config" if needs_bits else "", names=", names" if weighted else "",
        names_doc=", per layer position key" if weighted else "", formula_doc=formula_doc, body="\n".join(body),
        result=result, bits_check=BITS_CHECK if needs_bits else "", run_args=_run_args(passes),
        steps=", ".join(step.__name__ for step in pass_steps(passes)), contexts=contexts,
        prims=",\n                   ".join(value(n) for n in names),
        positions=", [layer_position(l.name, l.module.weight.shape) for l in layers]" if weighted else "")


def export_source(proxy: Proxy, module_name: str = "proxy") -> str:
    """The source of a standalone module scoring ``proxy`` (see the module docstring)."""
    _check_exportable(proxy)
    names = [n for n in REGISTRY if n in proxy.tree.terminals()]
    needs_bits = any(REGISTRY[n].pass_ == QUANT for n in names)
    outside: dict = {}  # functions defined outside KERNELS: name -> (fn, source, kernel names used, extra lines)
    own = _proxy_code(proxy, names, needs_bits, outside)
    imports, code = pick(names_used(own).union(*(uses for _, _, uses, _ in outside.values())))
    imports += [line for _, _, _, lines in outside.values() for line in lines]
    doc = _docstring(proxy, module_name, names, needs_bits).replace("\\", "\\\\").replace('"""', "'''")
    # no ``from __future__ import annotations``: real annotations keep the dataclasses independent of sys.modules
    parts = ['"""' + doc + '"""', "\n".join(dict.fromkeys(imports)), own, "\n".join(code)]
    parts += [body for _, body, _, _ in outside.values()]
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


__all__ = ["KERNELS", "export_file", "export_source"]
