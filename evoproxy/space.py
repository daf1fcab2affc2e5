"""The search space: a DEAP strongly typed primitive set over the proxy language, tree generation
and variation for the two structures.

* ``emq`` — EMQ's template: ``aggregate(reduce(binary(chain_a(T_a), chain_b(T_b))))`` where each
  chain is 0..``max_chain`` unary tensor ops on a terminal. Variation keeps the template: mutation
  replaces one terminal / unary op / binary op / reduction / aggregation, or inserts or deletes a
  unary op in one chain; crossover swaps one branch (or the reduction+aggregation head).
* ``tree`` — free typed GP trees (net -> layer -> tensor) with ``max_depth`` / ``max_size`` limits
  (DEAP ``staticLimit`` semantics: an over-limit child is replaced by its parent); crossover is
  DEAP's type-aware ``cxOnePoint`` on ``gp.PrimitiveTree``; mutation is a typed subtree
  replacement (DEAP ``mutUniform`` with our generator) or a same-signature node replacement.

Sampling weights: every operator and terminal has a weight (``Op.weight``, terminals 1), used
whenever one is drawn; ``weights={"log": 2, "matmul": 0}`` overrides them (0 removes one).
All randomness comes from Python's ``random`` module (DEAP's operators use it), which the search
seeds once per generation.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from deap import gp

from evoproxy.errors import ConfigError
from evoproxy.ops import LAYER, NET, OPS, TENSOR, ops_of
from evoproxy.tree import Node, canonical

STRUCTURES = ("emq", "tree")


class TensorT:  # DEAP types: one class per value type of the language
    pass


class LayerT:
    pass


class NetT:
    pass


DEAP_TYPES = {TENSOR: TensorT, LAYER: LayerT, NET: NetT}


def _deap_name(terminal: str) -> str:
    return "T_" + terminal.replace("@", "__")


def _unused(*args):  # DEAP needs a callable per primitive; trees are never compiled
    raise RuntimeError("proxy trees are evaluated by evoproxy.tree, not compiled")


@dataclass
class SearchSpace:
    terminals: list[str]
    structure: str = "emq"
    weights: dict = field(default_factory=dict)
    max_chain: int = 2
    max_depth: int = 8
    max_size: int = 30

    def __post_init__(self):
        from evoproxy.tree import terminal_names

        if self.structure not in STRUCTURES:
            raise ConfigError(f"--structure must be one of {', '.join(STRUCTURES)}, got {self.structure!r}")
        known = set(terminal_names())
        bad = [t for t in self.terminals if t not in known]
        if bad:
            raise ConfigError(f"unknown terminal(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
        bad = [k for k in self.weights if k not in OPS and k not in known]
        if bad:
            raise ConfigError(f"weights for unknown operator/terminal(s): {', '.join(bad)}")
        for k, v in self.weights.items():
            if not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"weight of {k} must be a number >= 0, got {v!r}")
        self.terminals = [t for t in self.terminals if self.weight(t) > 0]
        if not self.terminals:
            raise ConfigError("no terminal with a positive weight")
        for kind in ("unary", "binary", "reduce", "aggregate"):
            if not self.choices(kind):
                raise ConfigError(f"no {kind} operator with a positive weight")
        if self.max_depth < 4 or self.max_size < 4:
            raise ConfigError("max_depth and max_size must be >= 4")
        self.pset = self._pset()

    # ------------------------------------------------------------------ DEAP primitive set
    def _pset(self) -> gp.PrimitiveSetTyped:
        pset = gp.PrimitiveSetTyped("proxy", [], NetT)
        for op in OPS.values():
            if self.weight(op.name) > 0:
                pset.addPrimitive(_unused, [DEAP_TYPES[t] for t in op.in_types], DEAP_TYPES[op.out_type], name=op.name)
        for t in self.terminals:
            pset.addTerminal(t, TensorT, name=_deap_name(t))
        self._by_deap = {_deap_name(t): t for t in self.terminals}
        return pset

    def to_deap(self, node: Node) -> gp.PrimitiveTree:
        out = []

        def walk(n: Node):
            out.append(self.pset.mapping[_deap_name(n.name) if n.is_terminal else n.name])
            for c in n.children:
                walk(c)

        walk(node)
        return gp.PrimitiveTree(out)

    def from_deap(self, tree) -> Node:
        pos = 0

        def build() -> Node:
            nonlocal pos
            item = tree[pos]
            pos += 1
            if item.arity == 0:
                return Node(self._by_deap[item.name])
            return Node(item.name, tuple(build() for _ in range(item.arity)))

        return build()

    # ------------------------------------------------------------------ weights
    def weight(self, name: str) -> float:
        if name in self.weights:
            return float(self.weights[name])
        return OPS[name].weight if name in OPS else 1.0

    def choices(self, kind: str) -> list[str]:
        return [op.name for op in ops_of(kind) if self.weight(op.name) > 0]

    def draw(self, names: list[str]) -> str:
        return random.choices(names, weights=[self.weight(n) for n in names])[0]

    def draw_terminal(self) -> str:
        return self.draw(self.terminals)

    # ------------------------------------------------------------------ generation
    def random_tree(self) -> Node:
        if self.structure == "emq":
            return self._emq_random()
        return self.grow(NET, self.max_depth - 1)

    def _chain(self) -> Node:
        node = Node(self.draw_terminal())
        for _ in range(random.randint(0, self.max_chain)):
            node = Node(self.draw(self.choices("unary")), (node,))
        return node

    def _emq_random(self) -> Node:
        body = Node(self.draw(self.choices("binary")), (self._chain(), self._chain()))
        return Node(self.draw(self.choices("aggregate")), (Node(self.draw(self.choices("reduce")), (body,)),))

    def grow(self, type_: str, depth: int) -> Node:
        """A random tree of ``type_`` at most ``depth`` levels deep (``depth`` >= the type's minimum)."""
        if type_ == TENSOR:
            if depth <= 1 or random.random() < 0.35:
                return Node(self.draw_terminal())
            kinds = ["unary"] + (["binary"] if self.choices("binary") else [])
            kind = random.choices(kinds, weights=[1.0, 0.6][: len(kinds)])[0]
            name = self.draw(self.choices(kind))
            return Node(name, tuple(self.grow(TENSOR, depth - 1) for _ in OPS[name].in_types))
        if type_ == LAYER:
            if depth >= 3 and self.choices("lbinary") and random.random() < 0.2:
                name = self.draw(self.choices("lbinary"))
                return Node(name, (self.grow(LAYER, depth - 1), self.grow(LAYER, depth - 1)))
            return Node(self.draw(self.choices("reduce")), (self.grow(TENSOR, depth - 1),))
        if depth >= 4 and self.choices("nbinary") and random.random() < 0.15:
            name = self.draw(self.choices("nbinary"))
            return Node(name, (self.grow(NET, depth - 1), self.grow(NET, depth - 1)))
        return Node(self.draw(self.choices("aggregate")), (self.grow(LAYER, depth - 1),))

    def within_limits(self, node: Node) -> bool:
        return node.depth() <= self.max_depth and node.size() <= self.max_size

    # ------------------------------------------------------------------ variation
    def mutate(self, node: Node) -> Node:
        child = self._emq_mutate(node) if self.structure == "emq" else self._tree_mutate(node)
        return child if self.within_limits(child) else node

    def crossover(self, a: Node, b: Node) -> tuple[Node, Node]:
        if self.structure == "emq":
            x, y = self._emq_crossover(a, b)
        else:
            ta, tb = self.to_deap(a), self.to_deap(b)
            ta, tb = gp.cxOnePoint(ta, tb)
            x, y = self.from_deap(ta), self.from_deap(tb)
        return (x if self.within_limits(x) else a), (y if self.within_limits(y) else b)

    def _tree_mutate(self, node: Node) -> Node:
        tree = self.to_deap(node)
        if random.random() < 0.5:
            index = random.randrange(len(tree))
            type_ = next(k for k, v in DEAP_TYPES.items() if v is tree[index].ret)
            depth_here = _depth_of(tree, index)
            budget = max(self.max_depth - depth_here, {TENSOR: 1, LAYER: 2, NET: 3}[type_])
            sub = self.grow(type_, random.randint({TENSOR: 1, LAYER: 2, NET: 3}[type_], max(budget, 1)))
            replacement = self.to_deap(sub)
            tree[tree.searchSubtree(index)] = replacement[:]
            return self.from_deap(tree)
        return self._replace_node(node)

    def _replace_node(self, node: Node) -> Node:
        """Replace one node by another of the same signature (weighted), children kept."""
        paths = list(_paths(node))
        path = random.choice(paths)
        target = _get(node, path)
        if target.is_terminal:
            new = Node(self.draw_terminal())
        else:
            kind = OPS[target.name].kind
            new = Node(self.draw(self.choices(kind)), target.children)
        return _set(node, path, new)

    # emq template positions: root=(agg), (0,)=reduce, (0,0)=binary, (0,0,0)/(0,0,1) the two chains
    def _emq_mutate(self, node: Node) -> Node:
        move = random.choice(["terminal", "unary", "binary", "reduce", "aggregate", "insert", "delete"])
        branch = (0, 0, random.randint(0, 1))
        chain = _chain_paths(node, branch)  # paths of the unary ops, outermost first, then the terminal
        if move == "terminal":
            return _set(node, chain[-1], Node(self.draw_terminal()))
        if move == "unary" and len(chain) > 1:
            path = random.choice(chain[:-1])
            return _set(node, path, Node(self.draw(self.choices("unary")), _get(node, path).children))
        if move == "insert" and len(chain) - 1 < self.max_chain:
            path = random.choice(chain)
            return _set(node, path, Node(self.draw(self.choices("unary")), (_get(node, path),)))
        if move == "delete" and len(chain) > 1:
            path = random.choice(chain[:-1])
            return _set(node, path, _get(node, path).children[0])
        kind, path = {"binary": ("binary", (0, 0)), "reduce": ("reduce", (0,)), "aggregate": ("aggregate", ())}.get(
            move, ("binary", (0, 0)))
        target = _get(node, path)
        return _set(node, path, Node(self.draw(self.choices(kind)), target.children))

    def _emq_crossover(self, a: Node, b: Node) -> tuple[Node, Node]:
        part = random.choice(["branch", "branch", "head"])
        if part == "head":  # aggregation + reduction of one, body of the other
            body_a, body_b = _get(a, (0, 0)), _get(b, (0, 0))
            return _set(a, (0, 0), body_b), _set(b, (0, 0), body_a)
        pa, pb = (0, 0, random.randint(0, 1)), (0, 0, random.randint(0, 1))
        sa, sb = _get(a, pa), _get(b, pb)
        return _set(a, pa, sb), _set(b, pb, sa)


# ------------------------------------------------------------------------------------- tree paths

def _paths(node: Node, prefix=()):
    yield prefix
    for i, c in enumerate(node.children):
        yield from _paths(c, prefix + (i,))


def _get(node: Node, path) -> Node:
    for i in path:
        node = node.children[i]
    return node


def _set(node: Node, path, new: Node) -> Node:
    if not path:
        return new
    i = path[0]
    children = list(node.children)
    children[i] = _set(children[i], path[1:], new)
    return Node(node.name, tuple(children))


def _chain_paths(node: Node, start) -> list[tuple]:
    out, path = [], tuple(start)
    while True:
        out.append(path)
        n = _get(node, path)
        if n.is_terminal:
            return out
        path = path + (0,)


def _depth_of(tree, index: int) -> int:
    """Depth (root = 1) of the node at prefix position ``index`` of a DEAP tree."""
    open_counts = []  # children still to come, per open ancestor
    for i, item in enumerate(tree):
        if i == index:
            return len(open_counts) + 1
        if item.arity:
            open_counts.append(item.arity)
            continue
        while open_counts:
            open_counts[-1] -= 1
            if open_counts[-1] > 0:
                break
            open_counts.pop()
    raise IndexError(index)


def is_emq_shaped(node: Node) -> bool:
    """Whether ``node`` follows the emq template (used to check a resumed or seeded population)."""
    try:
        if OPS[node.name].kind != "aggregate" or OPS[node.children[0].name].kind != "reduce":
            return False
        body = _get(node, (0, 0))
        if body.is_terminal or OPS[body.name].kind != "binary":
            return False
        for k in (0, 1):
            n = body.children[k]
            while not n.is_terminal:
                if OPS[n.name].kind != "unary":
                    return False
                n = n.children[0]
        return True
    except (KeyError, IndexError):
        return False


__all__ = ["SearchSpace", "STRUCTURES", "canonical", "is_emq_shaped"]
