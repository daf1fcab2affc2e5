"""Code for ``evoproxy export``: the library's own source, reduced to what one proxy reaches, and the proxy's tree
stated as straight-line torch code.

* **Source.** The kernel modules (``KERNELS``: the PTQ quantizer and size formula, the extraction passes and
  primitive functions, the operators) share one namespace in a generated module; :func:`pick` keeps the
  top-level statements that some roots reach through the names they use (transitively), in source order,
  without intra-project imports. Functions defined elsewhere (an operator registered by a user) travel as
  their own source (:func:`function_ref`). Nothing numeric is written here: adding an operator, a primitive
  or a pass never touches this module.
* **The tree.** :func:`formula_lines` writes one assignment per distinct node of the tree (``t3 =
  op_znorm(t1)``): one loop over the layers per aggregation, the operators' kernel functions called by name.
"""
from __future__ import annotations

import ast
import functools
import importlib
import inspect
import io
import json
import re
import textwrap
import tokenize

from evoproxy.errors import ConfigError
from evoproxy.language.tree import render_json

KERNELS = ("mqbench.quant.kernels", "primitives.kernels", "primitives.richkernels", "primitives.passes",
           "evoproxy.language.opkernels")  # dependency order
PROJECT = ("mqbench", "primitives", "evoproxy")
CARRIED_MODULES = {"math", "torch"}  # modules an outside function may use (the generated module imports them)
RESERVED = {"score", "formula", "primitives"}  # the generated module's own functions
LOCAL = re.compile(r"^([tv]\d+|layers|counts|names|layer|row|i)$")  # the variables of the generated ``formula``


def _summaries(node, lines: list[str]) -> list[tuple[int, int, list[str]]]:
    """Edits (first line, last line, new lines; 1-based) that cut each multi-paragraph docstring of the definitions in
    ``node`` to its summary (the first paragraph: the rest is the library's documentation, not the proxy's)."""
    edits = []
    for sub in ast.walk(node):
        first = sub.body[0] if isinstance(sub, (ast.FunctionDef, ast.ClassDef)) and sub.body else None
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)):
            continue
        raw = lines[first.lineno - 1:first.end_lineno]
        cut = next((k for k, line in enumerate(raw) if not line.strip()), None)
        quote = '"""' if '"""' in raw[0] else "\'\'\'"
        if cut is None or not raw[0].strip().startswith(quote):
            continue
        last = raw[cut - 1].rstrip()
        edits.append((first.lineno, first.end_lineno, raw[:cut - 1] + [last + (" " if last.endswith(quote[0]) else "") + quote]))
    return edits


def _statements(source: str, where: str) -> list[tuple[set, set, str, bool]]:
    """Top-level statements of ``source``: (names bound, names used, code, is an import), without the module
    docstring, ``from __future__``, imports of the project's own modules and lines of comments only, docstrings
    cut to their summary (:func:`_summaries`)."""
    tree, lines = ast.parse(source), source.splitlines()
    comments = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT and tok.line.lstrip().startswith("#")}  # lines of a comment only
    out = []
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and (node.module == "__future__" or (node.module or "").split(".")[0] in PROJECT):
            continue
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in PROJECT for a in node.names):
            continue
        start = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
        text = [None if k + 1 in comments else line for k, line in enumerate(lines)]
        for first, last, new in sorted(_summaries(node, lines), reverse=True):
            text[first - 1:last] = new + [None] * (last - first + 1 - len(new))  # keeps the line numbers
        code = "\n".join(line for line in text[start - 1:node.end_lineno] if line is not None)
        ast.parse(code)  # a SyntaxError here is a bug of the cutting above, never of the proxy
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
def kernel_statements() -> tuple[tuple[str, set, set, str, bool], ...]:
    """(module, names bound, names used, code, is an import) of the statements of all KERNELS, which share one
    namespace in a generated module."""
    out, owner = [], {}
    for module in KERNELS:
        for bound, used, code, is_import in _statements(inspect.getsource(importlib.import_module(module)), module):
            for name in () if is_import else bound:
                if name in owner:
                    raise RuntimeError(f"{module} and {owner[name]} both define {name!r}: kernel modules share a namespace")
                owner[name] = module
            out.append((module, bound, used, code, is_import))
    return tuple(out)


def kernel_names() -> set:
    return {name for _, bound, _, _, is_import in kernel_statements() if not is_import for name in bound}


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
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    extra, uses = [], set()
    for var, value in sorted((k, v) for k, v in closure.globals.items() if k in names):
        if var in kernel_names():
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


def function_ref(fn, what: str, outside: dict) -> str:
    """The name ``fn`` has in the generated module (registering its source in ``outside`` when it is not a kernel:
    name -> (fn, source, kernel names it uses, extra import/constant lines))."""
    if getattr(fn, "__module__", None) in KERNELS and getattr(importlib.import_module(fn.__module__), fn.__name__, None) is fn:
        return fn.__name__
    name = getattr(fn, "__name__", "?")
    if name in kernel_names() | RESERVED or LOCAL.match(name) or (name in outside and outside[name][0] is not fn):
        raise ConfigError(f"cannot export {what}: its function name {name!r} clashes with another function")
    outside[name] = (fn, *_outside_function(fn, what))
    return name


def pick(roots: set) -> tuple[list[str], list[str]]:
    """(import lines, code) of the kernel statements that ``roots`` reach through the names they use, in source
    order: one blank line between definitions, a header line per source module; the imports reduced to the names
    used (``roots`` included)."""
    statements = kernel_statements()
    wanted, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        for _, bound, used, _, _ in statements:
            if name in bound:
                todo += used
    keep = [(module, code) for module, bound, _, code, is_import in statements if bound & wanted and not is_import]
    imports = [code for _, bound, _, code, is_import in statements if is_import and bound & wanted]
    out, module_now, previous = [], None, ""
    for module, code in keep:
        definition = code.startswith(("def ", "class ", "@"))
        if module != module_now:
            out.append(("\n\n" if out else "") + f"# {'-' * 8} from {module.replace('.', '/')}.py")
            module_now = module
        elif definition or previous.startswith(("def ", "class ", "@")):
            out.append("")
        out.append(code)
        previous = code
    return import_lines(imports, wanted), out


def import_lines(statements, used: set) -> list[str]:
    """Import statements reduced to the names in ``used``: ``import`` lines first, then ``from`` lines merged by
    module."""
    plain, froms = {}, {}
    for statement in statements:
        for node in ast.parse(statement).body:
            for a in node.names:
                bound = (a.asname or a.name).split(".")[0]
                if bound not in used:
                    continue
                text = a.name + (f" as {a.asname}" if a.asname else "")
                if isinstance(node, ast.Import):
                    plain[text] = None
                else:
                    froms.setdefault(node.module, {})[text] = None
    return ([f"import {t}" for t in sorted(plain)] +
            [f"from {m} import {', '.join(sorted(names))}" for m, names in sorted(froms.items())])


def names_used(code: str) -> set:
    return {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name)}


# ------------------------------------------------------------------------------------- the tree as code

LINE_WIDTH = 110  # a line's comment shows its node's formula when the line stays this short


class _Writer:
    """Straight-line code, one assignment ``t<k> = ...`` per distinct node of a scope (the net level, or one
    aggregation's loop body)."""

    def __init__(self, refs: dict):
        self.refs, self.lines, self.count = refs, [], 0

    def assign(self, scope: dict, node, expr: str, indent: str) -> str:
        key = json.dumps(node)
        if key not in scope:
            self.count += 1
            scope[key] = f"t{self.count}"
            line = f"{indent}{scope[key]} = {expr}"
            note = f"  # {render_json(node)}"
            self.lines.append(line + note if len(line + note) <= LINE_WIDTH else line)
        return scope[key]

    def layer(self, node, scope: dict, indent: str) -> str:
        """A tensor- or layer-level node inside an aggregation's loop over layers (``layer``: one layer's dict)."""
        if isinstance(node, str):
            return self.assign(scope, node, f"terminal(layer, {json.dumps(node, ensure_ascii=False)}, i)", indent)
        key = json.dumps(node)
        if key in scope:
            return scope[key]
        args = [self.layer(child, scope, indent) for child in node[1:]]
        return self.assign(scope, node, f"{self.refs[node[0]]}({', '.join(args)})", indent)

    def net(self, node, scope: dict, indent: str, terms: str | None = None) -> str:
        """A net-level node; ``terms``: the root aggregation's per-layer terms function (calibrated proxies)."""
        key = json.dumps(node)
        if key in scope:
            return scope[key]
        if len(node) == 3:
            a, b = self.net(node[1], scope, indent), self.net(node[2], scope, indent)
            return self.assign(scope, node, f"{self.refs[node[0]]}({a}, {b})", indent)
        values = f"v{self.count + 1}"
        line, note = f"{indent}{values} = []", f"  # per layer: {render_json(node[1])}"
        self.lines += [line + note if len(line + note) <= LINE_WIDTH else line,
                       f"{indent}for i, layer in enumerate(layers):"]
        last = self.layer(node[1], {}, indent + "    ")
        self.lines += [f"{indent}    {values}.append({last})"]
        if terms is None:
            return self.assign(scope, node, f"{self.refs[node[0]]}(*layer_row({values}, counts))", indent)
        self.lines.append(f"{indent}row = layer_row({values}, counts)")
        weights = "position_weights(LAYER_WEIGHTS, names, LAYER_WEIGHT_DEFAULT)[None]"
        return self.assign(scope, node, f"weighted_sum({terms}(*row), row[1], {weights})", indent)


def formula_lines(tree, refs: dict, terms: str | None = None, indent: str = "        ") -> tuple[list[str], str]:
    """(lines, name of the result [1] float64) computing the JSON ``tree`` on one network's ``layers`` and
    ``counts`` (and position keys ``names`` with ``terms``, the per-layer terms function of a calibrated root);
    ``refs``: operator name -> function name."""
    writer = _Writer(refs)
    result = writer.net(tree, {}, indent, terms)
    return writer.lines, result


__all__ = ["KERNELS", "formula_lines", "function_ref", "kernel_names", "names_used", "pick"]
