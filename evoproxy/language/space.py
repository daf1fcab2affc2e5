"""The DEAP adapter: the proxy language as a DEAP strongly typed set, the one tree type
(:class:`ProxyTree`, a ``gp.PrimitiveTree``), and the search space (generation and variation).

This is the only module that speaks DEAP's words: what DEAP calls a "primitive" is an *operator* of
:mod:`evoproxy.language.ops` here (``gp.Primitive`` named after the operator, its callable the operator's
function), a DEAP "terminal" is a *statistic* (a per-layer statistic of :mod:`primitives`,
``gp.Terminal`` whose value is its name). Types: ``TensorT`` -> ``LayerT`` ->
``NetT`` (``evoproxy.language.ops``' tensor / layer / net); a proxy tree returns ``NetT``. Trees are never
compiled (``gp.compile`` uses ``eval``): :mod:`evoproxy.language.tree` evaluates them.

Two structures:

* ``emq`` — EMQ's template: ``aggregate(reduce(binary(chain_a(T_a), chain_b(T_b))))`` where each
  chain is 0..``max_chain`` unary tensor ops on a terminal. Variation keeps the template: mutation
  replaces one terminal / unary op / binary op / reduction / aggregation, or inserts or deletes a
  unary op in one chain; crossover swaps one branch (or the reduction+aggregation head).
  Sampling weights: every operator and terminal has one (``Op.weight``, terminals 1), used whenever
  one is drawn; ``weights={"log": 2, "matmul": 0}`` overrides them (0 removes one).
* ``tree`` — free typed GP trees varied by DEAP's crossover and mutation: ``gp.cxOnePoint``, ``gp.mutUniform``
  (expression from :meth:`SearchSpace.generate`) or ``gp.mutNodeReplacement``. Layer and net types
  have no terminals, so DEAP's generators cannot end a branch there: :meth:`SearchSpace.generate`
  draws those levels (an aggregation, sometimes a binary net op; a reduction, sometimes a binary
  layer op) and ``gp.genGrow`` the tensor subtrees below. DEAP draws uniformly among the operators
  of a signature and among the terminals, so here a weight can only be 0 (removed) or 1.

Both structures' variation is limited by ``gp.staticLimit`` on ``depth`` (levels, a lone terminal
is 1) and ``size`` (nodes): an over-limit child is replaced by one of its parents. ``mutate`` and
``crossover`` never change their arguments. All randomness comes from Python's ``random`` module
(DEAP's operators use it), which the search seeds once per generation.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

from deap import gp

from evoproxy.errors import ConfigError
from evoproxy.language.ops import LAYER, NET, OPS, TENSOR, ops_of

STRUCTURES = ("emq", "tree")


class TensorT:  # DEAP types: one class per value type of the language
    pass


class LayerT:
    pass


class NetT:
    pass


DEAP_TYPES = {TENSOR: TensorT, LAYER: LayerT, NET: NetT}
TYPE_NAMES = {v: k for k, v in DEAP_TYPES.items()}
MIN_HEIGHT = {TensorT: 0, LayerT: 1, NetT: 2}  # the lowest tree of each type: T, reduce(T), agg(reduce(T))


# ------------------------------------------------------------------------------------- the tree type

class ProxyTree(gp.PrimitiveTree):
    """A proxy tree: DEAP's prefix list of nodes (operators as ``gp.Primitive``, statistics as
    ``gp.Terminal``). Its root's ``name``, ``type`` and ``is_terminal`` describe the whole tree's value."""

    @property
    def name(self) -> str:
        return self[0].name

    @property
    def is_terminal(self) -> bool:
        return self[0].arity == 0

    @property
    def type(self) -> str:
        return TYPE_NAMES[self[0].ret]

    def fold(self, leaf, node):
        """Bottom-up value: ``leaf(name)`` for a terminal, ``node(name, [argument values])`` else."""
        stack = []
        for item in reversed(self):
            if item.arity == 0:
                stack.append(leaf(item.name))
            else:
                stack.append(node(item.name, [stack.pop() for _ in range(item.arity)]))
        return stack[0]

    def to_json(self):
        """The JSON form: a terminal is its name, an operator node ``[name, child, ...]``."""
        return self.fold(lambda name: name, lambda name, args: [name, *args])

    def terminals(self) -> set[str]:
        return {item.name for item in self if item.arity == 0}

    def size(self) -> int:
        return len(self)

    def depth(self) -> int:
        return self.height + 1

    def __deepcopy__(self, memo):  # nodes are shared, immutable descriptions
        return self.__class__(self)


def typed_set(operators, terminals) -> gp.PrimitiveSetTyped:
    """A DEAP typed set over the named operators (callables: their :mod:`evoproxy.language.ops` functions)
    and terminals (statistic names)."""
    pset = gp.PrimitiveSetTyped("proxy", [], NetT)
    for name in operators:
        op = OPS[name]
        pset.addPrimitive(op.fn, [DEAP_TYPES[t] for t in op.in_types], DEAP_TYPES[op.out_type], name=name)
    for name in terminals:
        if name in OPS:
            raise ValueError(f"statistic {name!r} has an operator's name")
        pset.addTerminal(name, TensorT)
    return pset


def language() -> gp.PrimitiveSetTyped:
    """The whole language: every operator and every registered statistic (the parser's set); rebuilt
    when an operator or a statistic is registered (or removed) after the last call."""
    from primitives import PRIMITIVES

    return _language(tuple(OPS.items()), tuple(PRIMITIVES))


@functools.lru_cache(maxsize=1)
def _language(operators: tuple, terminals: tuple) -> gp.PrimitiveSetTyped:
    return typed_set(dict(operators), list(terminals))


# ------------------------------------------------------------------------------------- the search space

@dataclass
class SearchSpace:
    terminals: list[str]
    structure: str = "emq"
    weights: dict = field(default_factory=dict)
    max_chain: int = 2
    max_depth: int = 8
    max_size: int = 30

    def __post_init__(self):
        from primitives import PRIMITIVES

        if self.structure not in STRUCTURES:
            raise ConfigError(f"--structure must be one of {', '.join(STRUCTURES)}, got {self.structure!r}")
        bad = [t for t in self.terminals if t not in PRIMITIVES]
        if bad:
            raise ConfigError(f"unknown terminal(s) {', '.join(bad)}; known: {', '.join(sorted(PRIMITIVES))}")
        bad = [k for k in self.weights if k not in OPS and k not in PRIMITIVES]
        if bad:
            raise ConfigError(f"weights for unknown operator/terminal(s): {', '.join(bad)}")
        for k, v in self.weights.items():
            if not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"weight of {k} must be a number >= 0, got {v!r}")
            if self.structure == "tree" and v not in (0, 1):
                raise ConfigError(f"weight of {k} is {v}: the tree structure draws with DEAP's operators, "
                                  "uniformly, so a weight can only be 0 (remove) or 1")
        self.terminals = [t for t in self.terminals if self.weight(t) > 0]
        if not self.terminals:
            raise ConfigError("no terminal with a positive weight")
        for kind in ("unary", "binary", "reduce", "aggregate"):
            if not self.choices(kind):
                raise ConfigError(f"no {kind} operator with a positive weight")
        if self.max_depth < 4 or self.max_size < 4:
            raise ConfigError("max_depth and max_size must be >= 4")
        self.pset = typed_set([n for n in OPS if self.weight(n) > 0], self.terminals)
        limits = (gp.staticLimit(ProxyTree.depth, self.max_depth), gp.staticLimit(ProxyTree.size, self.max_size))
        mut, cx = (self._emq_mutate, self._emq_crossover) if self.structure == "emq" else (self._tree_mutate, gp.cxOnePoint)
        for limit in limits:
            mut, cx = limit(mut), limit(cx)
        self._mutate, self._crossover = mut, cx

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

    def node(self, name: str):
        """The DEAP node of an operator or terminal name."""
        return self.pset.mapping[name]

    # ------------------------------------------------------------------ generation
    def random_tree(self) -> ProxyTree:
        """A random tree of the structure within the limits (drawn again until it is; the emq
        template with the default limits always is)."""
        while True:
            if self.structure == "emq":
                tree = self._emq_random()
            else:
                tree = ProxyTree(self.generate(self.pset, MIN_HEIGHT[NetT], self.max_depth - 2))
            if self.within_limits(tree):
                return tree

    def generate(self, pset, min_: int, max_: int, type_=None) -> list:
        """A random expression of ``type_`` (default: the set's net type), ``max_`` high at most
        (raised to the type's lowest tree), in DEAP's generator form, so it can be ``mutUniform``'s
        ``expr``. Layer/net levels are drawn here, tensor subtrees by ``gp.genGrow`` (``min_`` high
        at least, counted from the root, where the tree reaches that deep)."""
        type_ = pset.ret if type_ is None else type_
        return self._expr(pset, type_, 0, min_, max(max_, MIN_HEIGHT[type_]))

    def _expr(self, pset, type_, depth: int, min_: int, max_: int) -> list:
        room = max_ - depth
        if type_ is TensorT:
            return gp.genGrow(pset, min(max(min_ - depth, 0), room), room, TensorT)
        if type_ is LayerT:
            kind = "lbinary" if room >= 2 and self.choices("lbinary") and random.random() < 0.2 else "reduce"
        else:
            kind = "nbinary" if room >= 3 and self.choices("nbinary") and random.random() < 0.15 else "aggregate"
        op = pset.mapping[random.choice(self.choices(kind))]
        out = [op]
        for arg in op.args:
            out += self._expr(pset, arg, depth + 1, min_, max_)
        return out

    def _chain(self) -> list:
        """Prefix list of one emq chain: the unary ops, outermost first, then the terminal."""
        terminal = self.draw_terminal()
        unary = [self.draw(self.choices("unary")) for _ in range(random.randint(0, self.max_chain))]
        return [self.node(n) for n in reversed(unary)] + [self.node(terminal)]

    def _emq_random(self) -> ProxyTree:
        binary = self.draw(self.choices("binary"))
        body = [self.node(binary), *self._chain(), *self._chain()]
        head = [self.node(self.draw(self.choices("aggregate"))), self.node(self.draw(self.choices("reduce")))]
        return ProxyTree(head + body)

    def within_limits(self, tree: ProxyTree) -> bool:
        return tree.depth() <= self.max_depth and tree.size() <= self.max_size

    # ------------------------------------------------------------------ variation
    def mutate(self, tree: ProxyTree) -> ProxyTree:
        """A mutant of ``tree`` (``tree`` itself is not changed)."""
        return self._mutate(ProxyTree(tree))[0]

    def crossover(self, a: ProxyTree, b: ProxyTree) -> tuple[ProxyTree, ProxyTree]:
        """Two children of ``a`` and ``b`` (which are not changed)."""
        x, y = self._crossover(ProxyTree(a), ProxyTree(b))
        return x, y

    def _tree_mutate(self, tree: ProxyTree) -> tuple[ProxyTree]:
        if random.random() < 0.5:
            return gp.mutUniform(tree, functools.partial(self.generate, min_=0, max_=self.max_depth // 2), self.pset)
        return gp.mutNodeReplacement(tree, self.pset)

    # emq template positions (prefix order): 0 aggregation, 1 reduction, 2 binary op, then the two chains
    @staticmethod
    def _chain_at(tree: ProxyTree, branch: int) -> list[int]:
        """Positions of one chain: its unary ops, outermost first, then its terminal."""
        start = 3 if branch == 0 else tree.searchSubtree(3).stop
        return list(range(start, tree.searchSubtree(start).stop))

    def _emq_mutate(self, tree: ProxyTree) -> tuple[ProxyTree]:
        move = random.choice(["terminal", "unary", "binary", "reduce", "aggregate", "insert", "delete"])
        chain = self._chain_at(tree, random.randint(0, 1))
        end = chain[-1] + 1
        if move == "terminal":
            tree[chain[-1]] = self.node(self.draw_terminal())
        elif move == "unary" and len(chain) > 1:
            i = random.choice(chain[:-1])
            tree[i] = self.node(self.draw(self.choices("unary")))
        elif move == "insert" and len(chain) - 1 < self.max_chain:
            i = random.choice(chain)
            tree[i:end] = [self.node(self.draw(self.choices("unary")))] + tree[i:end]
        elif move == "delete" and len(chain) > 1:
            i = random.choice(chain[:-1])
            tree[i:end] = tree[i + 1:end]
        else:  # binary, reduce, aggregate; and a chain move that does not apply
            kind, i = {"reduce": ("reduce", 1), "aggregate": ("aggregate", 0)}.get(move, ("binary", 2))
            tree[i] = self.node(self.draw(self.choices(kind)))
        return (tree,)

    def _emq_crossover(self, a: ProxyTree, b: ProxyTree) -> tuple[ProxyTree, ProxyTree]:
        part = random.choice(["branch", "branch", "head"])
        if part == "head":  # aggregation + reduction of one, body of the other
            sa, sb = a.searchSubtree(2), b.searchSubtree(2)
        else:
            ca, cb = self._chain_at(a, random.randint(0, 1)), self._chain_at(b, random.randint(0, 1))
            sa, sb = slice(ca[0], ca[-1] + 1), slice(cb[0], cb[-1] + 1)
        a[sa], b[sb] = b[sb], a[sa]
        return a, b


def is_emq_shaped(tree: ProxyTree) -> bool:
    """Whether ``tree`` follows the emq template (the invariant of the emq variation)."""
    kinds = [OPS[item.name].kind if item.arity else "terminal" for item in tree]
    if kinds[:3] != ["aggregate", "reduce", "binary"]:
        return False
    i = 3
    for _ in range(2):
        while i < len(kinds) and kinds[i] == "unary":
            i += 1
        if i >= len(kinds) or kinds[i] != "terminal":
            return False
        i += 1
    return i == len(kinds)


__all__ = ["SearchSpace", "STRUCTURES", "ProxyTree", "is_emq_shaped", "language", "typed_set"]
