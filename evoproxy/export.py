"""Export a proxy file as a standalone Python module that depends only on torch (and the standard library).

    evoproxy export runs/nb_s0/best.json -o my_proxy.py
    import my_proxy
    my_proxy.score(model, inputs, targets)                     # NAS proxy
    my_proxy.score(model, inputs, targets, bit_config=[8, 4, ...])  # MQ proxy: weight bits per layer

The generated module is the library's own code: the source of the torch-only kernel modules
(``KERNELS``: the PTQ quantizer and size formula, the extraction passes and statistic functions, the
operators and the tree evaluator), reduced to the top-level definitions the proxy reaches, their
intra-project imports dropped; plus the source of any registered operator or statistic function
defined elsewhere; plus a short template (the tree, its orientation, the statistics' passes and
extraction settings, ``score``). Nothing numeric is written here, so adding an operator or a statistic never
touches this file, and the generated module computes what ``primitives.extract`` and
``Proxy.score`` compute (same passes, seeds, layouts, one torch thread, float32 terminals).
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import re
import textwrap
from pathlib import Path

from evoproxy.errors import ConfigError
from evoproxy.ops import OPS
from evoproxy.tree import Proxy, load_proxy
from primitives.core import HESSIAN, INPUT_PASSES, QUANT, REGISTRY, pass_needs

KERNELS = ("mqbench.kernels", "primitives.kernels", "primitives.richkernels", "primitives.passes",
           "evoproxy.opkernels")  # dependency order
PROJECT = ("mqbench", "primitives", "evoproxy")
CARRIED_MODULES = {"math", "torch"}  # modules an outside function may use (the generated module imports them)


def _statements(source: str, where: str) -> list[tuple[set, set, str, bool]]:
    """Top-level statements of ``source``: (names bound, names used, code, is an import), without the module
    docstring, ``from __future__`` and imports of the project's own modules."""
    tree, lines = ast.parse(source), source.splitlines()
    out = []
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and (node.module == "__future__" or (node.module or "").split(".")[0] in PROJECT):
            continue
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in PROJECT for a in node.names):
            continue
        start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
        code = "\n".join(lines[start - 1:node.end_lineno])
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound = {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound = {node.name}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        else:
            raise ConfigError(f"{where}: cannot export a top-level {type(node).__name__} statement")
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - bound
        out.append((bound, used, code, isinstance(node, (ast.Import, ast.ImportFrom))))
    return out


@functools.lru_cache(maxsize=None)
def _kernel_statements() -> tuple[tuple[set, set, str, bool], ...]:
    """The statements of all KERNELS, which share one namespace in a generated module."""
    out, owner = [], {}
    for module in KERNELS:
        for bound, used, code, is_import in _statements(inspect.getsource(importlib.import_module(module)), module):
            for name in () if is_import else bound:
                if name in owner:
                    raise RuntimeError(f"{module} and {owner[name]} both define {name!r}: kernel modules share a namespace")
                owner[name] = module
            out.append((bound, used, code, is_import))
    return tuple(out)


def _kernel_names() -> set:
    return {name for bound, _, _, is_import in _kernel_statements() if not is_import for name in bound}


def _outside_function(fn, what: str) -> tuple[str, set, list[str]]:
    """(source without decorators, kernel names it uses, extra lines it needs) of a function defined outside
    the kernel modules (e.g. an operator registered by a user or a test)."""
    name = getattr(fn, "__name__", "?")
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        node = ast.parse(source).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        raise ConfigError(f"cannot export {what}: the source of its function {name!r} is not available") from None
    if not isinstance(node, ast.FunctionDef) or node.name != name:
        raise ConfigError(f"cannot export {what}: its function must be a plain def (got {name!r})")
    closure = inspect.getclosurevars(fn)
    if closure.nonlocals:
        raise ConfigError(f"cannot export {what}: its function {name!r} uses enclosing variables {sorted(closure.nonlocals)}")
    kernel_names, names = _kernel_names(), {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    extra, uses = [], set()
    for var, value in sorted((k, v) for k, v in closure.globals.items() if k in names):
        if var in kernel_names:
            uses.add(var)
        elif inspect.ismodule(value) and value.__name__ in CARRIED_MODULES:
            extra.append(f"import {value.__name__}" + ("" if var == value.__name__ else f" as {var}"))
        elif isinstance(value, (bool, int, float, str)) and not isinstance(value, type):
            extra.append(f"{var} = {value!r}")
        else:
            raise ConfigError(f"cannot export {what}: its function {name!r} uses {var!r}, which is not a torch/math "
                              f"module, a plain constant or a kernel of {', '.join(KERNELS)}")
    body = "\n".join(source.splitlines()[node.lineno - 1:node.end_lineno])
    return body, uses, extra


def _function_ref(fn, what: str, outside: dict) -> str:
    """The name ``fn`` has in the generated module (registering its source in ``outside`` when it is not a kernel)."""
    if getattr(fn, "__module__", None) in KERNELS and getattr(importlib.import_module(fn.__module__), fn.__name__, None) is fn:
        return fn.__name__
    name = getattr(fn, "__name__", "?")
    if name in _kernel_names() | {"score", "formula", "primitives"} or (name in outside and outside[name][0] is not fn):
        raise ConfigError(f"cannot export {what}: its function name {name!r} clashes with another function")
    outside[name] = (fn, *_outside_function(fn, what))
    return name


def _prune(statements, roots: set) -> tuple[list[str], list[str]]:
    """(imports, other code) of the statements that ``roots`` reach through the names they use, in source order."""
    wanted, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        for bound, used, _, _ in statements:
            if name in bound:
                todo += used
    keep = [(code, is_import) for bound, _, code, is_import in statements if bound & wanted]
    imports = list(dict.fromkeys(code for code, is_import in keep if is_import))
    blocks: list[str] = []
    for code, _ in (k for k in keep if not k[1]):
        simple = not code.startswith(("def ", "class ", "@"))
        if blocks and simple and not blocks[-1].startswith(("def ", "class ", "@")):
            blocks[-1] += "\n" + code  # consecutive constants stay together
        else:
            blocks.append(code)
    return imports, blocks


def _check_exportable(proxy: Proxy) -> None:
    unknown = sorted(proxy.tree.terminals() - set(REGISTRY))
    if unknown:
        raise ConfigError(f"{proxy.source or 'proxy'}: cannot export unknown statistic(s) {', '.join(unknown)}")


def _operator_names(tree) -> list[str]:
    """The operators of a JSON tree, first use first."""
    if isinstance(tree, str):
        return []
    return list(dict.fromkeys([tree[0]] + [n for child in tree[1:] for n in _operator_names(child)]))


def _docstring(proxy: Proxy, module_name: str, names: list[str], needs_bits: bool, settings: list[str]) -> str:
    call = "score(model, inputs, targets, bit_config)" if needs_bits else "score(model, inputs, targets)"
    orient = "the formula's value" if proxy.orientation == 1 else "minus the formula's value"
    what = "bit configurations" if needs_bits else "networks"
    args = ("``model``: a torch.nn.Module in the mode it is to be scored in (evoproxy scores NAS networks in "
            "train mode, pretrained quantized ones in eval mode); ``inputs`` [N, ...] a batch and ``targets`` [N] "
            "its class labels" + ("; ``bit_config``: weight bits of the Conv2d/Linear layers in forward order (a "
                                  "list), or a dict layer name -> bits." if needs_bits else "."))
    prims = "\n".join(f"    {n:<22} {REGISTRY[n].pass_} pass" for n in names)
    search = ", ".join(f"{k} {v}" for k, v in proxy.search.items() if not isinstance(v, (dict, list)))
    return f'''{module_name}: a training-free proxy exported by evoproxy from {proxy.source or "a proxy tree"}.

    score = {proxy.formula}

LaTeX: {proxy.latex()}

The score is {orient} (orientation {proxy.orientation}); higher scores predict more accurate {what}.
{textwrap.fill(f"Search: {search}.", 100) + chr(10) if search else ""}
Usage::

    import {module_name}
    value = {module_name}.{call}

{textwrap.fill(args, 100)}

Statistics (per Conv2d/Linear layer, forward order, as primitives.extract computes them; settings:
{", ".join(settings)}):
{prims}

Conventions: mean cross-entropy of the logits, gradients by torch.autograd.grad, activations averaged
over spatial positions ([N, C]), the model's train/eval mode as given; weights, buffers and
requires_grad flags are left as they were. The code is evoproxy's own (modules
{", ".join(KERNELS)}). Depends only on torch and the standard library.
'''


TEMPLATE = '''


def score(model, inputs, targets, bit_config=None, *, seed=SEED):
    """ORIENTATION * formula(...) on the model's statistics: higher predicts a more accurate {what}."""
    layers, counts, names = primitives(model, inputs, targets, bit_config, seed=seed, with_names=True)
    return ORIENTATION * formula(layers, counts, names)


def formula(layers, counts, names=None):
    """The tree's value (before the orientation). ``layers``: one dict {{statistic name: tensor}} per layer,
    ``counts``: each layer's weight count, ``names``: each layer's position key (needed with LAYER_WEIGHTS)."""
    return evaluate_proxy(TREE, layers, counts, OPERATORS, names, LAYER_WEIGHTS, LAYER_WEIGHT_DEFAULT)


def primitives(model, inputs, targets, bit_config=None, *, seed=SEED, with_names=False):
    """(per layer {{statistic: tensor}} for PRIMITIVES, per layer weight count[, position keys]), forward order."""
    if NEEDS_BITS and bit_config is None:
        raise ValueError("this proxy scores a bit configuration: pass bit_config (weight bits per Conv2d/Linear "
                         "in forward order, or a dict layer name -> bits)")
    validate_bit_values(bit_config if NEEDS_BITS else None)
    with fixed_threads(THREADS):
        candidates = layer_candidates(model)
        x, y = prepare_batch(model, inputs, targets)
        layers, captures, _ = run_passes(model, candidates, x, y, PASSES, HUTCHINSON_PROBES, int(seed), NOISE_STD,
                                         CHANNELS_LAST)
        bits = bits_per_layer(bit_config if NEEDS_BITS else None, [l.name for l in layers])
        values = [{{name: owned(compute(ctx, fn, pass_, captures)) for name, (pass_, fn) in PRIMITIVES.items()}}
                  for ctx in layer_contexts(model, layers, bits, QUANTIZER)]
        counts = [math.prod(l.module.weight.shape) for l in layers]
        return (values, counts, [layer_position(l.name, l.module.weight.shape) for l in layers]) if with_names else (values, counts)
'''


def export_source(proxy: Proxy, module_name: str = "proxy") -> str:
    """The source of a standalone module scoring ``proxy`` (see the module docstring)."""
    _check_exportable(proxy)
    tree = proxy.tree.to_json()
    names = [n for n in REGISTRY if n in proxy.tree.terminals()]
    needs_bits = any(REGISTRY[n].pass_ == QUANT for n in names)
    passes = {p: sorted(needs) for p, needs in pass_needs(names).items()}
    outside: dict = {}
    prims = {n: (REGISTRY[n].pass_, _function_ref(REGISTRY[n].fn, f"statistic {n!r}", outside)) for n in names}
    ops = {n: _function_ref(OPS[n].fn, f"operator {n!r}", outside) for n in _operator_names(tree)}
    probes = int(proxy.extraction.get("hutchinson_probes", 0))
    noise = float(proxy.extraction.get("noise_std", 0.01))
    settings = ["seed 0", "one torch thread", "channels_last inputs for the input passes"]
    if any(p in passes for p in INPUT_PASSES[1:]):
        settings.append(f"noise_std {noise}")
    if HESSIAN in passes:
        settings.append(f"{probes} Hutchinson probes")
    header = [
        f"TREE = {json.dumps(tree, ensure_ascii=False)}  # evoproxy.proxy/1 form",
        f"ORIENTATION = {proxy.orientation}",
        "SEED = 0  # seeds the noise / perturbation / Hutchinson generators (the evaluator's PROXY_SEED)",
        "THREADS = 1  # torch intra-op threads while computing (results depend on it at float32 rounding)",
        "CHANNELS_LAST = True  # input passes on channels_last inputs (primitives.extract's default)",
        f"NOISE_STD = {noise!r}",
        f"HUTCHINSON_PROBES = {probes}",
        f"PASSES = {json.dumps(passes)}  # pass -> what it records",
        f"NEEDS_BITS = {needs_bits}",
        f"QUANTIZER = {'quantize_weight' if needs_bits else None}  # the PTQ weight quantizer (MQ proxies)",
        "PRIMITIVES = {" + ", ".join(f'"{n}": ("{p}", {f})' for n, (p, f) in prims.items()) + "}",
        "OPERATORS = {" + ", ".join(f'"{n}": {f}' for n, f in ops.items()) + "}",
        f"LAYER_WEIGHTS = {(proxy.layer_weights or {}).get('weights')!r}  # evoproxy calibrate: "
        "{layer name: weight} of the root's per-layer terms",
        f"LAYER_WEIGHT_DEFAULT = {float((proxy.layer_weights or {}).get('default', 1.0))!r}",
    ]
    template = "\n".join(header) + TEMPLATE.format(what="bit configuration" if needs_bits else "network")
    roots = {n.id for n in ast.walk(ast.parse(template)) if isinstance(n, ast.Name)}
    imports, code = _prune(_kernel_statements(), roots.union(*(uses for _, _, uses, _ in outside.values())))
    imports += [line for _, _, _, lines in outside.values() for line in lines]
    doc = _docstring(proxy, module_name, names, needs_bits, settings).replace("\\", "\\\\").replace('"""', "'''")
    # no ``from __future__ import annotations``: real annotations keep the dataclasses independent of sys.modules
    parts = ['"""' + doc + '"""', "\n".join(dict.fromkeys(imports)), *code, *(body for _, body, _, _ in outside.values())]
    parts.append("# " + "-" * 86 + " the proxy\n" + template.strip("\n"))
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
