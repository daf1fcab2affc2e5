"""Proxy trees: the JSON file format and its parser, rendering, canonical form, their value on statistics.

A tree is a :class:`evoproxy.language.space.ProxyTree` (DEAP's ``gp.PrimitiveTree``, the one tree type of the
project): operators of :mod:`evoproxy.language.ops` over terminals, each the name of a per-layer statistic of
:mod:`primitives` (e.g. ``"weight_grad"``). Its root has type ``net``.

JSON proxy file (``evoproxy.proxy/1``), written by the search and read only by :func:`parse_proxy`
(never eval'd or unpickled)::

    {"format": "evoproxy.proxy/1",
     "tree": ["layer_sum", ["l1", ["mul", "weight_grad", "weight"]]],
     "orientation": 1,                      # score = orientation * value of the tree
     "formula": "Σ_l ||(G * W)||_1",        # informative; regenerated from the tree on load
     "extraction": {"hutchinson_probes": 0, "noise_std": 0.01},   # how statistics are extracted
     "search": {...},                       # optional: benchmark, fitness, seed, ...
     "layer_weights": {...}}                # optional: learned per-layer-position weights (evoproxy calibrate)

An operator node is a list ``[name, child, ...]``; a terminal is a string. Files written before the
``extraction`` key existed call it ``primitives``; :func:`parse_proxy` reads either.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from evoproxy.errors import ConfigError
from evoproxy.language.ops import NET, OPS, OpError
from evoproxy.language.space import TYPE_NAMES, ProxyTree, language


FORMAT = "evoproxy.proxy/1"
MAX_NODES = 200
MAX_DEPTH = 40

# terminal -> (plain symbol, LaTeX symbol)
SYMBOLS = {
    "weight": ("W", "W"),
    "weight_grad": ("G", "G"),
    "act_in": ("X", "X"),
    "act_out": ("A", "A"),
    "act_grad": ("dA", r"\partial A"),
    "fisher": ("F", "F"),
    "act_x_grad": ("AdA", r"A\partial A"),
    "hessian_diag": ("H", "H"),
    "hessian_trace": ("trH", r"\mathrm{tr}H"),
    "weight_q": ("Wq", "W_q"),
    "quant_error": ("(W-Wq)", r"\left(W - W_q\right)"),
    "bitwidth": ("b", "b"),
    "size_mb": ("MB", r"\mathrm{MB}"),
    "params": ("P", r"\#\theta"),
    "hessian_block_trace": ("trH_l", r"\mathrm{tr}H_{l}"),
}
SUFFIX_SYMBOLS = {"@noise": ("~", r"\tilde{{{0}}}"), "@perturb": ("^", r"\hat{{{0}}}")}


class ProxyFileError(ConfigError):
    """A proxy file or tree that is not valid in the proxy language."""


def terminal_symbol(name: str, latex: bool = False) -> str:
    base, suffix = (name.split("@", 1) + [""])[:2]
    plain, tex = SYMBOLS.get(base, (base, r"\mathrm{" + base.replace("_", r"\_") + "}"))
    if not suffix:
        return tex if latex else plain
    mark = SUFFIX_SYMBOLS.get("@" + suffix)
    if mark is None:
        return (tex if latex else plain) + "@" + suffix
    return mark[1].format(tex) if latex else plain + mark[0]


def canonical(tree: ProxyTree) -> str:
    """A string equal for trees that differ only in the order of commutative operands."""
    return canonical_json(tree.to_json())


def canonical_json(obj) -> str:
    """:func:`canonical` of a tree's JSON form (walked here, so that the tree type is only asked for its JSON)."""
    if isinstance(obj, str):
        return obj
    parts = [canonical_json(c) for c in obj[1:]]
    if OPS[obj[0]].commutative:
        parts = sorted(parts)
    return f"{obj[0]}({','.join(parts)})"


def render(tree: ProxyTree, latex: bool = False) -> str:
    """The formula in readable form (``latex=True``: a LaTeX math expression)."""
    return render_json(tree.to_json(), latex)


def render_json(obj, latex: bool = False) -> str:
    """:func:`render` of a tree's JSON form, or of a subtree's (a terminal's name renders as its symbol)."""
    if isinstance(obj, str):
        return terminal_symbol(obj, latex)
    op = OPS[obj[0]]
    return (op.latex if latex else op.text).format(*(render_json(c, latex) for c in obj[1:]))


# ------------------------------------------------------------------------------------- parsing

def parse_tree(obj, where: str = "tree") -> ProxyTree:
    """A :class:`ProxyTree` from the JSON form, checking operators, arities and types (ProxyFileError)."""
    tree = ProxyTree(_parse(obj, where, 0))
    if tree.type != NET:
        raise ProxyFileError(f"{where}: the root must be a network-level operator (e.g. layer_sum), "
                             f"got {tree.name!r} of type {tree.type}")
    if tree.size() > MAX_NODES:
        raise ProxyFileError(f"{where}: {tree.size()} nodes, more than the limit {MAX_NODES}")
    return tree


def _parse(obj, where: str, depth: int) -> list:
    """The prefix list of nodes of ``obj``."""
    if depth > MAX_DEPTH:
        raise ProxyFileError(f"{where}: nested deeper than {MAX_DEPTH}")
    if isinstance(obj, str):
        if obj in OPS:
            raise ProxyFileError(f"{where}: operator {obj!r} used without arguments")
        from primitives import PRIMITIVES

        if obj not in PRIMITIVES:
            raise ProxyFileError(f"{where}: unknown statistic {obj!r}; known: {', '.join(PRIMITIVES)}")
        return [language().mapping[obj]]
    if not isinstance(obj, list) or not obj:
        raise ProxyFileError(f"{where}: expected an operator list [name, args...] or a statistic's name, "
                             f"got {type(obj).__name__}")
    name = obj[0]
    if not isinstance(name, str):
        raise ProxyFileError(f"{where}[0]: operator name must be a string, got {type(name).__name__}")
    if name not in OPS:
        raise ProxyFileError(f"{where}[0]: unknown operator {name!r}")
    op = OPS[name]
    args = obj[1:]
    if len(args) != op.arity:
        raise ProxyFileError(f"{where}: operator {name!r} takes {op.arity} argument(s), got {len(args)}")
    children = [_parse(a, f"{where}[{i + 1}]", depth + 1) for i, a in enumerate(args)]
    for i, (child, want) in enumerate(zip(children, op.in_types)):
        got = TYPE_NAMES[child[0].ret]
        if got != want:
            raise ProxyFileError(f"{where}[{i + 1}]: operator {name!r} needs a {want} argument, "
                                 f"got {child[0].name!r} of type {got}")
    return [language().mapping[name], *(item for child in children for item in child)]


@dataclass
class Proxy:
    """A parsed proxy file: the tree, its orientation and how its statistics are extracted."""

    tree: ProxyTree
    orientation: int = 1
    extraction: dict = field(default_factory=dict)  # EXTRACTION_SETTINGS: hutchinson_probes, noise_std
    search: dict = field(default_factory=dict)
    source: str | None = None
    layer_weights: dict | None = None  # learned by ``evoproxy calibrate`` (see :mod:`evoproxy.fitting.calibrate`)

    @property
    def formula(self) -> str:
        prefix = "" if self.orientation == 1 else "-"
        body = render(self.tree)
        return f"{prefix}({body})" if prefix else body

    def latex(self) -> str:
        body = render(self.tree, latex=True)
        return body if self.orientation == 1 else rf"-\left({body}\right)"

    @property
    def primitives(self) -> dict:
        """Deprecated name of :attr:`extraction`."""
        return self.extraction

    def to_json(self) -> dict:
        out = {"format": FORMAT, "formula": self.formula, "tree": self.tree.to_json(),
               "orientation": self.orientation, "extraction": dict(self.extraction), "search": dict(self.search)}
        if self.layer_weights is not None:
            out["layer_weights"] = self.layer_weights
        return out

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename)."""
        from mqbench.fileio import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    def value(self, stats) -> float:
        """The score on already extracted statistics (:class:`primitives.NetworkStats`): orientation times
        :func:`tree_value`, or :func:`calibrated_value` with the proxy's learned ``layer_weights``."""
        if self.layer_weights is None:
            return self.orientation * tree_value(self.tree, stats)
        return self.orientation * calibrated_value(self.tree, stats, self.layer_weights)

    def statistics_request(self, batch: int = 64):
        """What this proxy reads: its statistics and their settings (:class:`primitives.items.StatsRequest`)."""
        from primitives.items import StatsRequest

        return StatsRequest.of(self.tree.terminals(), self.extraction.get("hutchinson_probes", 0),
                               self.extraction.get("noise_std", 0.01), batch)

    def score(self, model, inputs, targets, bit_config=None) -> float:
        """Score a network (and, for MQ proxies, its bit configuration: bits per Conv2d/Linear in forward order
        or a dict layer name -> bits) on a batch; equal to the exported module's ``score``."""
        from primitives.items import model_statistics

        configs = None if bit_config is None else [bit_config]
        (stats,) = model_statistics(model, inputs, targets, self.statistics_request(len(inputs)), configs)
        return self.value(stats)


EXTRACTION_SETTINGS = {"hutchinson_probes": int, "noise_std": float}
PRIMITIVE_SETTINGS = EXTRACTION_SETTINGS  # deprecated name


def parse_proxy(obj, source: str = "proxy") -> Proxy:
    """A :class:`Proxy` from a decoded JSON document (ProxyFileError naming the problem)."""
    if not isinstance(obj, dict):
        raise ProxyFileError(f"{source}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("format") != FORMAT:
        raise ProxyFileError(f"{source}: not an evoproxy proxy (format must be {FORMAT!r}, got {obj.get('format')!r})")
    if "tree" not in obj:
        raise ProxyFileError(f"{source}: no 'tree'")
    try:
        tree = parse_tree(obj["tree"])
    except ProxyFileError as exc:
        raise ProxyFileError(f"{source}: {exc}") from None
    orientation = obj.get("orientation", 1)
    if orientation not in (1, -1) or isinstance(orientation, bool):
        raise ProxyFileError(f"{source}: orientation must be 1 or -1, got {orientation!r}")
    if "extraction" in obj and "primitives" in obj:
        raise ProxyFileError(f"{source}: both 'extraction' and 'primitives' (its old name); keep 'extraction'")
    key_name = "primitives" if "primitives" in obj else "extraction"  # files written before the rename
    given = obj.get(key_name, {}) or {}
    if not isinstance(given, dict):
        raise ProxyFileError(f"{source}: '{key_name}' must be an object")
    settings = {}
    for key, value in given.items():
        if key not in EXTRACTION_SETTINGS:
            raise ProxyFileError(f"{source}: unknown {key_name} setting {key!r}; known: {', '.join(EXTRACTION_SETTINGS)}")
        kind = EXTRACTION_SETTINGS[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProxyFileError(f"{source}: {key_name}.{key} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0 or (kind is int and value != int(value)):  # JSON allows NaN
            what = "an integer" if kind is int else "a finite number"
            raise ProxyFileError(f"{source}: {key_name}.{key} must be {what} >= 0, got {value!r}")
        settings[key] = kind(value)
    needs_probes = any(t.startswith("hessian") for t in tree.terminals())
    if needs_probes and settings.get("hutchinson_probes", 0) <= 0:
        raise ProxyFileError(f"{source}: the tree uses the Hessian but {key_name}.hutchinson_probes is not > 0")
    search = obj.get("search", {}) or {}
    if not isinstance(search, dict):
        raise ProxyFileError(f"{source}: 'search' must be an object")
    layer_weights = None
    if obj.get("layer_weights") is not None:
        layer_weights = parse_layer_weights(obj["layer_weights"], source, tree)
    return Proxy(tree, int(orientation), settings, search, source, layer_weights)


LAYER_WEIGHTS_KEY = "layer_position"  # evoproxy.language.opkernels.layer_position: "<layer name>:<weight shape>"
MAX_LAYER_POSITIONS = 100_000


def parse_layer_weights(obj, source: str, tree) -> dict:
    """The validated ``layer_weights`` object of a proxy file (ProxyFileError naming the problem)."""
    if not isinstance(obj, dict):
        raise ProxyFileError(f"{source}: 'layer_weights' must be an object")
    unknown = sorted(set(obj) - {"key", "weights", "default", "fit"})
    if unknown:
        raise ProxyFileError(f"{source}: unknown layer_weights field(s) {', '.join(map(repr, unknown))}")
    if obj.get("key") != LAYER_WEIGHTS_KEY:
        raise ProxyFileError(f"{source}: layer_weights.key must be {LAYER_WEIGHTS_KEY!r}, got {obj.get('key')!r}")
    if OPS[tree.name].kind != "aggregate":
        raise ProxyFileError(f"{source}: layer_weights need a tree whose root aggregates over layers, "
                             f"got {tree.name!r}")
    weights = obj.get("weights")
    if not isinstance(weights, dict) or not weights or len(weights) > MAX_LAYER_POSITIONS:
        raise ProxyFileError(f"{source}: layer_weights.weights must be a non-empty object {{layer position: number}} "
                             f"with at most {MAX_LAYER_POSITIONS} entries")
    out = {}
    for name, w in list(weights.items()) + [(None, obj.get("default", 1.0))]:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            what = "layer_weights.default" if name is None else f"layer_weights.weights[{name!r}]"
            raise ProxyFileError(f"{source}: {what} must be a finite number, got {w!r}")
        out[name] = float(w)
    default = out.pop(None)
    fit = obj.get("fit", {})
    if not isinstance(fit, dict):
        raise ProxyFileError(f"{source}: layer_weights.fit must be an object")
    return {"key": LAYER_WEIGHTS_KEY, "weights": out, "default": default, "fit": dict(fit)}


def load_proxy(path: str | Path) -> Proxy:
    """Read and parse a proxy JSON file (ProxyFileError / ConfigError with one line on any problem)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"proxy file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read proxy file {path}: {exc}") from None
    too_deep = (f"{path}: nested deeper than a proxy file may be (its tree at most {MAX_DEPTH} levels, "
                f"the file at most {MAX_JSON_DEPTH})")
    if json_depth(text) > MAX_JSON_DEPTH:  # json.loads would recurse past Python's limit before the parser's check
        raise ProxyFileError(too_deep)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProxyFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:  # deep nesting the scan missed (it cannot: kept as the last line of defence)
        raise ProxyFileError(too_deep) from None
    return parse_proxy(obj, str(path))


MAX_JSON_DEPTH = MAX_DEPTH + 10  # the tree's lists, with room for the objects around it (search, layer_weights)
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth(text: str) -> int:
    """The deepest nesting of JSON arrays and objects in ``text`` (brackets inside strings do not count)."""
    depth = peak = 0
    for token in _JSON_TOKENS.findall(text):
        if token in ("[", "{"):
            depth += 1
            peak = max(peak, depth)
        elif token in ("]", "}"):
            depth -= 1
    return peak


# ------------------------------------------------------------------------------------- values on statistics

def tree_value(node, stats) -> float:
    """The tree's value on one network's statistics (:class:`primitives.NetworkStats`), computed by the
    search's evaluator (:func:`evoproxy.language.vectorised.tree_values`) on a stack of one network.

    Raises :class:`OpError` when an operator cannot be applied; may return nan/inf (the caller
    decides: the search rejects, the evaluator counts a failure)."""
    from evoproxy.language.vectorised import stack, tree_values

    result = tree_values(node.to_json(), stack([stats], names=node.terminals()), 0, 1)
    if result.error is not None:
        raise result.error[1]
    return float(result.values[0])


def layer_terms_on(node, stats) -> tuple[list[str], torch.Tensor]:
    """(layer positions, [layers] float64 per-layer terms) of a tree whose root aggregates over layers, on one
    network's statistics: the terms of the search's evaluator (:func:`evoproxy.language.vectorised.layer_terms`), whose sum
    over the layers is the tree's value; positions as :func:`evoproxy.language.opkernels.layer_position` keys.
    Raises :class:`OpError` ("structure" for another root) when an operator cannot be applied."""
    from evoproxy.language.vectorised import layer_terms, stack

    st = stack([stats], names=node.terminals(), positions=True)
    result = layer_terms(node.to_json(), st, 0, 1)
    if result.error is not None:
        raise result.error[1]
    keys = st.positions[0]
    return keys, torch.as_tensor(result.values[0][:len(keys)])


def calibrated_value(node, stats, layer_weights: dict) -> float:
    """The value of a calibrated tree on one network's statistics: sum_l w_p(l) t_l, the per-layer terms
    (:func:`layer_terms_on`) weighted by ``layer_weights`` (a proxy file's, see :func:`parse_layer_weights`: the
    weight of each layer's position, ``default`` for a position without one); all weights 1 give
    :func:`tree_value`. ConfigError when none of the weights' positions occurs in the network."""
    from evoproxy.language.opkernels import layer_position, position_weights, weighted_sum

    check_positions_occur(layer_weights["weights"], [layer_position(l.name, l.weight_shape) for l in stats.layers])
    keys, terms = layer_terms_on(node, stats)
    weights = position_weights(layer_weights["weights"], keys, layer_weights.get("default", 1.0))
    return float(weighted_sum(terms[None], torch.ones(1, len(keys), dtype=torch.bool), weights[None])[0])


def check_positions_occur(weights: dict, found: list) -> None:
    """ConfigError (one line) when none of the calibrated layer positions ``weights`` occurs among a network's
    ``found`` ones (:func:`evoproxy.language.opkernels.layer_position` keys): the weights were fit on another network, and
    every layer taking the default weight would silently give the uncalibrated proxy."""
    if found and not any(key in weights for key in found):
        raise ConfigError(f"none of the proxy's {len(weights)} calibrated layer positions occur in the network (expected "
                          f"e.g. {next(iter(weights))!r}, found e.g. {found[0]!r}): its layer_weights were fit on "
                          "another network")
