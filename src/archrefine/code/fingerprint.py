"""The structural fingerprint of model-written PyTorch code, read from its AST alone.

`fingerprint` describes the `Net` a source defines (its layer constructors and the ops its
forward applies) without executing anything, so duplicates can be found in this process; the
code itself only ever runs in `archrefine.sandbox.sandbox`. The op names are listed in
docs/real-loop.md and given by `archrefine.code.ops`; `archrefine.code.tokens.to_tokens` maps
them into the grounded vocabulary. Over 400 lines because its three readers (names,
`__init__`, `forward`) share one state and one work budget (`BUDGET`): apart, each would reach
into the others' private state.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import threading
from collections import Counter
from dataclasses import dataclass, field

from cachetools import LRUCache, cached

from archrefine.code.aliases import resolve
from archrefine.code.ast_helpers import (
    UNKNOWN,
    CodeError,
    bind_literal,
    bind_target,
    dotted_name,
    find_method,
    is_sequential,
    literal_value,
    parse_source,
    preorder,
    return_values,
    source_key,
    syntax_message,
    target_names,
)
from archrefine.code.ops import DETAIL, op_name
from archrefine.code.reachable import empty_iterable, live, taken, truth
from archrefine.code.scopes import binding_counts

__all__ = ["Fingerprint", "fingerprint"]


@dataclass(frozen=True)
class Fingerprint:
    """A network's structure as read from its source: the layer constructors in `__init__`,
    in order, and the operations `forward` applies, in evaluation order (see docs/real-loop.md
    for the op names). Renaming variables or attributes does not change it."""

    layers: tuple[str, ...]
    forward: tuple[str, ...]
    detail: tuple[str, ...] = field(default=(), compare=False, repr=False)
    """`forward` with the arguments of `ops.HYPER` that are not the default (`Dropout[p=0.3]`):
    what `novelty_code.structure` compares. Not part of `canonical`, `sha1` or equality."""
    held: tuple[tuple[str, ...], ...] = field(default=(), compare=False, repr=False)
    """As `detail`, what each network the source holds besides `Net` itself would run (`_held`):
    each module `Net` builds into an attribute, each other class, each module-level instance. A
    copy that `Net` reaches in a way the reader does not follow (`getattr(self, 'r')(x)`, a
    dict, a local function) shows here (`novelty_code.CodeNovelty`)."""

    @property
    def canonical(self) -> str:
        return f"layers={';'.join(self.layers)}|forward={';'.join(self.forward)}"

    @property
    def sha1(self) -> str:
        """A stable hash of `canonical` (the same in every process and Python version)."""
        return hashlib.sha1(self.canonical.encode()).hexdigest()

    def __str__(self) -> str:
        return self.canonical


def fingerprint(source: str) -> Fingerprint:
    """The structural fingerprint of the `Net` in `source`, from its AST (nothing is executed).

    Raises CodeError when the source does not parse or defines no top-level `class Net`. Each
    source is read once per process while it stays in `_MEMO` (the loop asks for it again for
    the metrics and the archive; a 200 KB one costs seconds), its CodeError too.
    """
    if not isinstance(source, str):
        return _read(source)  # whatever ast.parse makes of it, as before
    found = _remembered(source)
    if isinstance(found, str):
        raise CodeError(found)
    return found


def _read_or_why(source: str) -> Fingerprint | str:
    """The fingerprint, or why there is none (a CodeError's message, remembered like one).

    "Nested too deeply" is raised, not remembered: it depends on the caller's stack depth (and
    free memory) as well as on the source, and each caller got its own answer before."""
    try:
        return _read(source)
    except CodeError as err:
        if str(err) == _TOO_DEEP:
            raise
        return str(err)


def _read(source: str) -> Fingerprint:
    tree = parse_source(source)
    if not any(isinstance(n, ast.ClassDef) and n.name == "Net" for n in tree.body):
        raise CodeError("no top-level class Net")
    try:
        counts = binding_counts(tree)  # the rewrite binds nothing new
        reader = _Reader(resolve(tree, BUDGET, counts), counts)
        layers, forward = reader.analyse("Net", {})
        held = _held(reader, tree, forward)
    except RecursionError:
        raise CodeError(_TOO_DEEP) from None
    plain = tuple(op.partition(DETAIL)[0] for op in forward)
    return Fingerprint(tuple(op.partition(DETAIL)[0] for op in layers), plain, _detail(forward),
                       tuple(_detail(part) for part in held))  # fmt: skip


def _detail(ops: list[str]) -> tuple[str, ...]:
    return tuple(op.replace(DETAIL, "") for op in ops)


def _held(reader: _Reader, tree: ast.Module, forward: list[str]) -> list[list[str]]:
    """The forward ops of each network the source holds besides `Net`: each attribute `Net`
    built (one module, or all a container holds, and each of those), then each other class
    read with its defaults (also one defined in a class or a function: a copy nested in `Net`
    or made by a function evaded a reading of top-level classes), then each module-level
    instance. They get a budget of their own (`BUDGET`, after `Net`'s), and a source that
    runs out of it is refused as one whose `Net` does: keeping what was read by then would let a
    copy hide behind decoys that cost the budget (a count of networks would, too)."""
    net = reader.scopes.get(("Net", ()))
    parts: list[list[str]] = []
    reader.spent = 0
    for items in net.attrs.values() if net is not None else ():
        parts += [[op for item in items for op in item], *(items if len(items) > 1 else [])]
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    configured = _configured(tree, classes)
    for i, cls in enumerate(classes):  # ast.walk: the top-level ones first
        reader.spend()
        if cls.name in configured:  # what runs is its configured reading (an attribute's)
            continue
        if reader.classes.get(cls.name) not in (None, cls):  # a nested namesake
            cls = copy.copy(cls)
            cls.name = f"{cls.name}#{i}"
        reader.classes.setdefault(cls.name, cls)  # a nested one: readable by its name
        if cls.name != "Net":
            parts.append(reader.analyse(cls.name, {})[1])
    for name in list(reader.instances) if net is not None else ():
        reader.spend()
        parts.append([op for item in net.items(ast.Name(id=name)) for op in item])
    inside: set[tuple[str, ...]] = set()  # read as `Proj` within a larger `Net`: an ensemble
    if net is not None and sum(op not in ("Save", "?") for op in forward) > 1:
        inside = {tuple(op for item in net.attrs.get(a, []) for op in item) for a in net.proj}
    return [list(p) for p in dict.fromkeys(tuple(p) for p in parts if p and tuple(p) not in inside)]


def _configured(tree: ast.Module, classes: list[ast.ClassDef]) -> set[str]:
    """Classes the source builds with arguments (`MLP(hidden=512)`) or subclasses: their
    reading with defaults is not what runs, and an honest configurable class whose defaults
    are a known network (`MLP(hidden=128)`) was made that network's twin."""
    names = {c.name for c in classes}
    bases = {b.id for c in classes for b in c.bases if isinstance(b, ast.Name)}
    called = {
        node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and (node.args or node.keywords)
        and isinstance(node.func, ast.Name | ast.Attribute)
    }  # fmt: skip
    return names & (bases | called)


def _weight(found: Fingerprint | str) -> int:
    """About the bytes a remembered result holds: 1 KB for the entry (its key, the cache's
    bookkeeping), then ~64 per string besides its text."""
    if isinstance(found, str):
        return 1024 + len(found)
    ops = found.layers + found.forward + found.detail + tuple(op for p in found.held for op in p)
    return 1024 + sum(64 + len(op) for op in ops)


# ---- reading the AST ---------------------------------------------------------------------------

CONTAINERS = frozenset({"Sequential", "ModuleList", "ModuleDict"})
# fmt: off
SHAPE_METHODS = frozenset({"view", "reshape", "permute", "transpose", "expand", "repeat", "size",
                           "unsqueeze", "squeeze", "flatten"})
"""Tensor methods whose arguments are shapes (arithmetic on them is not a network op)."""
QUIET_METHODS = frozenset({"size", "dim", "numel", "contiguous", "clone", "detach", "to",
                           "float", "double", "half", "type", "cpu", "cuda", "item", "forward"})
"""Tensor methods that do not change what the network computes."""
BUDGET = 200_000
"""AST nodes read and ops collected for one source: a 415-character Net of four nested
`range(32)` loops took 118 s and growing memory in the loop's process before this bound."""
# fmt: on
_TOO_DEEP = syntax_message(RecursionError())  # "source is nested too deeply to read"
_MEMO: LRUCache = LRUCache(maxsize=64_000_000, getsizeof=_weight)
"""Fingerprints (or why not) of the sources read last, by their SHA-256, the least recently used
dropped past ~64 MB (one within `BUDGET` holds at most 200,000 ops of `ops.MAX_OP` characters,
~30 MB)."""
_remembered = cached(_MEMO, key=source_key, lock=threading.Lock())(_read_or_why)


_Method = ast.FunctionDef


class _Reader:
    """Resolves names through the module's imports and reads classes into op lists."""

    def __init__(self, tree: ast.Module, counts: Counter) -> None:
        self.alias: dict[str, str] = {}
        self.consts: dict[str, object] = {}
        self.classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        once = {k for k, n in counts.items() if n == 1}  # the same name everywhere
        self.functions = {n.name: n for n in tree.body
                          if isinstance(n, ast.FunctionDef) and n.name in once}  # fmt: skip
        self.lambdas = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign)
                        and isinstance(n.value, ast.Lambda) for t in n.targets
                        if isinstance(t, ast.Name) and t.id in once}  # fmt: skip
        for node in _module_level(tree):  # a function's own imports: `aliases.resolve`
            if isinstance(node, ast.Import):
                for a in node.names:
                    top = a.name.split(".")[0]
                    self.alias[a.asname or top] = a.name if a.asname else top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    self.alias[a.asname or a.name] = f"{node.module}.{a.name}"
        self.instances: dict[str, ast.Call] = {}  # `MODEL = Copy()` at module level
        self.instance_items: dict[str, list[list[str]]] = {}  # what each one holds, read once
        for node in tree.body:
            bind_literal(node, self.consts)
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                self.instances |= {t.id: node.value for t in node.targets
                                   if isinstance(t, ast.Name)}  # fmt: skip
        stars = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 and any(a.name == "*" for a in n.names)}  # fmt: skip
        self.star_nn = "torch.nn" in stars  # `from torch.nn import *`: Conv2d is nn.Conv2d
        self.cache: dict[tuple, tuple[list[str], list[str]]] = {}
        self.scopes: dict[tuple, _Scope] = {}  # each class read, by `analyse`'s key
        self.active: set[str] = set()
        self.mros: dict[str, list[ast.ClassDef]] = {}  # local classes, in method lookup order
        self.spent = 0

    def spend(self, items: list | None = None) -> list:
        """Count one step, or the items collected; nested loops, builders and classes multiply
        both. CodeError past `BUDGET`."""
        self.spent += 1 if items is None else len(items)
        if self.spent > BUDGET:
            raise CodeError(f"source is too intricate to read (over {BUDGET:,} steps)")
        return [] if items is None else items

    def method(self, cls: ast.ClassDef, name: str, *, above: bool = False) -> _Method | None:
        """Method `name` of `cls` as Python finds it: in `cls` (unless `above`, as `super()`
        does), else in its local base classes. A copy of a known network that `Net` inherits
        (`class Net(Copy)`) was read as an empty network, and scored as novel text."""
        if (order := self.mros.get(cls.name)) is None:
            order, todo, seen = [], [cls], set()
            while todo and len(order) < 256:  # breadth first: Python's order without diamonds
                c = todo.pop(0)
                if c.name not in seen:
                    seen.add(c.name)
                    order.append(c)
                    todo += [self.classes[b.id] for b in c.bases
                             if isinstance(b, ast.Name) and b.id in self.classes]  # fmt: skip
            self.mros[cls.name] = order
        return next((f for c in order[above:] if (f := find_method(c, name))), None)

    def base_method(self, cls: ast.ClassDef, call: ast.Call) -> _Method | None:
        """The method a `super().<name>(...)` or `Base.<name>(self, ...)` call in `cls` runs,
        when it is a local class's (else None)."""
        func = call.func
        if _on_super(func):
            return self.method(cls, func.attr, above=True)  # type: ignore[union-attr]
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in self.classes
            and dotted_name(call.args[0] if call.args else call) == "self"
        ):
            return self.method(self.classes[func.value.id], func.attr)
        return None

    def class_method(self, qual: str) -> _Method | None:
        """The method `Cls.name` finds, for a local class `Cls`: `Net.conv(3, 32)` calls a
        staticmethod builder through its class."""
        head, _, name = qual.partition(".")
        cls = self.classes.get(head)
        return self.method(cls, name) if cls is not None and name and "." not in name else None

    def qual(self, node: ast.AST) -> str:
        dotted = dotted_name(node)
        head, _, rest = dotted.partition(".")
        if self.star_nn and head[:1].isupper() and head not in self.alias | self.classes:
            head = f"torch.nn.{head}"
        head = self.alias.get(head, head)
        return f"{head}.{rest}" if rest and head else head

    def analyse(self, name: str, bound: dict[str, object]) -> tuple[list[str], list[str]]:
        """(layers, forward ops) of local class `name` with `__init__` arguments `bound`."""
        key = (name, tuple(sorted((k, repr(v)) for k, v in bound.items())))
        if key in self.cache:
            return self.cache[key]
        if name in self.active:  # a class that contains itself: give up on it, do not recurse
            return [], ["?"]
        self.active.add(name)
        try:
            cls = self.classes[name]
            init = self.method(cls, "__init__")
            scope = _Scope(self, self.consts, cls)
            scope.consts = _known(scope.consts | scope.bind(cls, None) | bound)
            if init is not None:
                for stmt in live(init.body):
                    scope.read_init(stmt)
            if (forward := self.method(cls, "forward")) is not None:
                ops = _Forward(scope).run(forward)
            else:
                ops = list(scope.layers) if is_sequential(cls) else []
            self.cache[key] = (scope.layers, ops)
            self.scopes[key] = scope
            return scope.layers, ops
        finally:
            self.active.discard(name)


class _Scope:
    """One class being read: its layers, and what each `self.<attr>` does in forward (as
    items: one op list per module a container holds, so loops over it can be unrolled)."""

    def __init__(self, reader: _Reader, consts: dict, cls: ast.ClassDef) -> None:
        self.reader, self.consts, self.cls = reader, dict(consts), cls
        self.layers: list[str] = []
        self.attrs: dict[str, list[list[str]]] = {}
        self.local: dict[str, list[list[str]]] = {}
        self.proj: set[str] = set()  # attributes forward calls on a saved input (read `Proj`)

    def read_init(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.If | ast.While) and (body := taken(stmt, self.consts)) is not None:
            for inner in live(body):  # `if False:` / `while 0:`: only the branch that runs
                self.read_init(inner)
            return
        if isinstance(stmt, ast.For | ast.If | ast.With):
            if not (values := self.unroll(stmt)):
                for inner in live(stmt.orelse):
                    self.read_init(inner)
            for value in values:
                if isinstance(stmt, ast.For):
                    bind_target(stmt.target, value, self.consts)
                for part in (stmt.body, getattr(stmt, "orelse", [])):
                    for inner in live(part):
                        self.read_init(inner)
            return
        for node in preorder(stmt):
            self.reader.spend()
            if isinstance(node, ast.Call):
                self.layers += self.reader.spend(self.ops(node, layers=True))
        bind_literal(stmt, self.consts)
        if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                if dotted_name(target).startswith("self.") and dotted_name(target).count(".") == 1:
                    self.attrs[target.attr] = self.items(stmt.value)
                elif isinstance(target, ast.Name):
                    self.local[target.id] = self.items(stmt.value)
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            func = stmt.value.func  # layers.append(...), self.blocks.extend(...)
            adds = isinstance(func, ast.Attribute) and func.attr in ("append", "extend")
            if adds and (held := self.holder(func.value)) is not None:
                held.extend(item for a in stmt.value.args for item in self.items(a))
        elif isinstance(stmt, ast.AugAssign) and (held := self.holder(stmt.target)) is not None:
            held.extend(self.items(stmt.value))

    def unroll(self, stmt: ast.stmt) -> list[object]:
        """Loop-variable values of a short loop over constants; else one pass (ifs: one pass)."""
        if not (isinstance(stmt, ast.For) and target_names(stmt.target)):
            return [UNKNOWN]
        values = literal_value(stmt.iter, self.consts)
        if isinstance(stmt.iter, ast.Call) and dotted_name(stmt.iter.func) == "range":
            bounds = [literal_value(a, self.consts) for a in stmt.iter.args]
            try:  # len() overflows past 2**63 items: `range(10**22)` raised in the loop
                span = range(*bounds)  # type: ignore[arg-type]
                values = list(span) if len(span) <= 32 else UNKNOWN
            except (TypeError, ValueError, OverflowError):
                values = UNKNOWN
        if isinstance(values, list | tuple) and not values:
            return []  # `for _ in []:` never runs its body (only its `else`)
        ok = isinstance(values, list | tuple) and 0 < len(values) <= 32
        return list(values) if ok else [UNKNOWN]  # type: ignore[arg-type]

    def holder(self, node: ast.AST) -> list[list[str]] | None:
        """The op list a local name or a `self.<attr>` collects modules in."""
        if isinstance(node, ast.Name):
            return self.local.setdefault(node.id, [])
        name = dotted_name(node)
        if name.startswith("self.") and name.count(".") == 1:
            return self.attrs.setdefault(name[5:], [])
        return None

    def items(self, node: ast.AST) -> list[list[str]]:
        """Forward ops of each module an `__init__` expression builds."""
        if isinstance(node, ast.List | ast.Tuple):
            return [item for elt in node.elts for item in self.items(elt)]
        if isinstance(node, ast.ListComp | ast.GeneratorExp):
            return self.comprehension(node, node.elt)
        if isinstance(node, ast.Dict):  # nn.ModuleDict({"conv": nn.Conv2d(...), ...})
            return [item for value in node.values for item in self.items(value)]
        if isinstance(node, ast.DictComp):
            return self.comprehension(node, node.value)
        if isinstance(node, ast.Starred):
            return self.items(node.value)
        instance = isinstance(node, ast.Name) and node.id not in self.local
        if instance and node.id in self.reader.instances:  # `self.m = MODEL`, `MODEL(x)`
            known = self.reader.instance_items
            if node.id not in known:  # read once, and as nothing while being read
                known[node.id] = []
                known[node.id] = self.items(self.reader.instances[node.id])
            return self.reader.spend(list(known[node.id]))
        if isinstance(node, ast.Name):  # counted: `layers += layers` in a loop doubles it
            return self.reader.spend(list(self.local.get(node.id, [])))
        if (name := dotted_name(node).removesuffix(".forward")).count(".") == 1 and (
            name.startswith("self.")  # `self.s = self.r`, `self.f = self.r.forward`
        ):
            return self.reader.spend(list(self.attrs.get(name[5:], [])))
        if not isinstance(node, ast.Call):
            return []
        if self.reader.qual(node.func).split(".")[-1] in CONTAINERS:
            return [item for a in node.args for item in self.items(a)]
        ops = self.ops(node, layers=False)
        return [ops] if ops else []

    def comprehension(self, node: ast.ListComp | ast.GeneratorExp | ast.DictComp, elt: ast.AST
                      ) -> list[list[str]]:  # fmt: skip
        """Items of each pass of a comprehension over one short constant iterable, its
        variables bound (`[nn.Linear(a, b) for a, b in [(3072, 128), (128, 64)]]`: read as one
        layer of unknown width, a copy of `mlp` so written scored novelty 0.59); else of one
        pass. The variables do not outlive it, as in Python."""
        gen = node.generators[0]
        fake = ast.For(target=gen.target, iter=gen.iter, body=[], orelse=[])
        one = len(node.generators) > 1 or gen.is_async
        values = [UNKNOWN] if one else self.unroll(fake)
        names = target_names(gen.target) or []
        saved = {n: self.consts[n] for n in names if n in self.consts}
        found: list[list[str]] = []
        try:
            for value in values:
                self.reader.spend()  # nested comprehensions multiply their passes
                bind_target(gen.target, value, self.consts)
                if not any(truth(test, self.consts) is False for test in gen.ifs):
                    found += self.items(elt)
        finally:
            for n in names:
                self.consts.pop(n, None)
            self.consts |= saved
        return found

    def ops(self, call: ast.Call, *, layers: bool) -> list[str]:
        """Ops for one constructor call in `__init__` (layers=True: its layers)."""
        qual = self.reader.qual(call.func)
        name = qual.rsplit(".", 1)[-1]
        if qual.startswith("torch.nn.") and name[:1].isupper():  # a module, not nn.init.*
            op = "" if name in CONTAINERS else op_name(name, call, 0, self.consts)
            return [op] if op else []
        if qual in self.reader.classes:
            return self.local_class(qual, call, layers)
        if isinstance(call.func, ast.Attribute) and call.func.attr == "__init__":
            fn = self.reader.base_method(self.cls, call)  # a local base's, into this class
            qual = "self.super().__init__" if fn is not None else qual
            if fn is not None and not _on_super(call.func):  # `Base.__init__(self, c)`: its
                call = ast.Call(call.func, call.args[1:], call.keywords)  # `self` is no argument
        elif qual.startswith("self."):
            fn = self.reader.method(self.cls, qual[5:])
        else:  # a module-level builder function: `self.body = make_block(32)`, or a class's
            fn = self.reader.functions.get(qual) or self.reader.class_method(qual)  # `Net.f(3)`
        key = f"{self.cls.name}.{qual}"
        if fn is None or key in self.reader.active:
            return []
        self.reader.active.add(key)  # a builder method such as self._make_layer(...)
        try:
            # the parameters the call's arguments fill: all but `self` through an instance,
            # all of a staticmethod's, and all but `cls` of a classmethod's through the class
            kind = "staticmethod" if qual.startswith("self.") else "classmethod"
            skip = qual.startswith("self.") != any(
                dotted_name(d) == kind for d in fn.decorator_list
            )
            bound = self.bind(fn, call, skip=int(skip and qual != fn.name))
            sub = _Scope(self.reader, _known(self.consts | bound), self.cls)
            for stmt in live(fn.body):
                sub.read_init(stmt)
            if qual == "self.super().__init__":
                self.attrs |= sub.attrs  # the base's layers are this instance's
            if layers:
                return sub.layers
            return [op for r in return_values(fn) for item in sub.items(r) for op in item]
        finally:
            self.reader.active.discard(key)

    def local_class(self, name: str, call: ast.Call, layers: bool) -> list[str]:
        cls = self.reader.classes[name]
        if self.reader.method(cls, "__init__") is None:  # a thin subclass: ChannelLayerNorm
            base = next((self.reader.qual(b) for b in cls.bases), "")
            if base.startswith("torch.nn.") and base.split(".")[-1] not in ("Module", *CONTAINERS):
                return [op_name(base.rsplit(".", 1)[-1], call, 0, self.consts)]
        inner_layers, inner_ops = self.reader.analyse(name, self.bind(cls, call))
        if "Attention" in inner_ops:
            return ["Attention"]
        if "Mul" in inner_ops and {"Sigmoid", "Hardsigmoid"} & set(inner_ops):
            return ["SE"]
        return inner_layers if layers else inner_ops

    def bind(self, cls: ast.ClassDef | ast.FunctionDef, call: ast.Call | None, skip: int = 1
             ) -> dict:  # fmt: skip
        """`__init__` parameters of `cls` (or of the method or function `cls`, less its first
        `skip`: `self`) as constants: `call`'s arguments, else defaults; UNKNOWN for the rest (a
        parameter hides a module constant of its name: `_known`)."""
        init = cls if isinstance(cls, ast.FunctionDef) else self.reader.method(cls, "__init__")
        if init is None:
            return {}
        a = init.args
        every = [p.arg for p in a.posonlyargs + a.args]
        params = every[skip:]
        bound: dict[str, ast.AST | None] = dict.fromkeys(params + [p.arg for p in a.kwonlyargs])
        bound |= dict(zip(every[len(every) - len(a.defaults) :], a.defaults, strict=True))
        bound |= {p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d}
        if call is not None:
            spread = any(isinstance(x, ast.Starred) for x in call.args)
            spread |= any(k.arg is None for k in call.keywords)
            given = dict(zip(params, call.args, strict=False))
            bound |= dict.fromkeys(bound) if spread else given  # `f(*xs)`: positions unknown
            bound |= {k.arg: k.value for k in call.keywords if k.arg}
        return {k: UNKNOWN if v is None else literal_value(v, self.consts)
                for k, v in bound.items() if k in params or k not in every}  # fmt: skip


class _Forward(ast.NodeVisitor):
    """Ops of a forward method in evaluation order (arguments before the call using them)."""

    def __init__(self, scope: _Scope) -> None:
        self.scope, self.ops, self.saved, self.loops = scope, [], set(), {}
        self.depth = 0
        self.local: dict[str, ast.FunctionDef | ast.Lambda] = dict(scope.reader.lambdas)
        """Functions and lambdas defined where forward can call them by name."""

    def run(self, fn: ast.FunctionDef | ast.Lambda) -> list[str]:
        for stmt in live(fn.body) if isinstance(fn.body, list) else [ast.Expr(fn.body)]:
            self.visit(stmt)
        return [op for op in self.ops if op]

    def _inline(self, fn: ast.FunctionDef | ast.Lambda) -> None:
        """The ops of a helper (a method, a base's through `super()`, a function or a lambda)
        called from forward."""
        inner = _Forward(self.scope)
        inner.depth, inner.saved, inner.local = self.depth + 1, set(self.saved), dict(self.local)
        self.ops += inner.run(fn)

    def generic_visit(self, node: ast.AST) -> None:
        """As NodeVisitor's, but a block of statements (the body of a `with`, `try`, `except`,
        `match` case ...) only up to its first `return`, `raise`, `break` or `continue`."""
        for _, value in ast.iter_fields(node):
            if isinstance(value, list):
                for item in live(value):
                    if isinstance(item, ast.AST):
                        self.visit(item)
            elif isinstance(value, ast.AST):
                self.visit(value)

    def visit_If(self, node: ast.If | ast.While) -> None:
        body = taken(node, self.scope.consts)
        if body is None:  # decided at run time: both branches may run
            self.generic_visit(node)
        for stmt in live(body or []):
            self.visit(stmt)

    visit_While = visit_If

    def visit_IfExp(self, node: ast.IfExp) -> None:
        test = truth(node.test, self.scope.consts)
        if test is None:
            self.generic_visit(node)
        else:
            self.visit(node.body if test else node.orelse)

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp) -> None:
        if not any(empty_iterable(g.iter, self.scope.consts) for g in node.generators):
            self.generic_visit(node)  # `[... for _ in []]` never evaluates its element

    visit_SetComp = visit_GeneratorExp = visit_DictComp = visit_ListComp

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:  # run where called, if it is
        self.local[node.name] = node

    def visit_ClassDef(self, node: ast.AST) -> None:
        return None

    visit_AsyncFunctionDef = visit_ClassDef

    def visit(self, node: ast.AST) -> None:
        self.scope.reader.spend()  # a loop over a container revisits its body per module
        super().visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for t in node.targets:  # `act = lambda t: F.relu(t)`, then `act(x)`
            if isinstance(t, ast.Name) and isinstance(node.value, ast.Lambda):
                self.local[t.id] = node.value
            elif isinstance(t, ast.Name):
                self.local.pop(t.id, None)
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if isinstance(node.value, ast.Name) and len(names) == len(node.targets) != names.count(
            node.value.id
        ):  # `identity = x` (not `x = x`, what `x = f(x) if 0 else x` is)
            self.saved.update(t.id for t in node.targets)  # e.g. `identity = x`: a skip starts
            self.ops.append("Save")

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        self._binop(node.op, node.value)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        self.generic_visit(node)
        if not isinstance(node.left, ast.Constant):
            self._binop(node.op, node.right)

    def _binop(self, op: ast.operator, other: ast.AST) -> None:
        if not isinstance(other, ast.Constant):
            kinds = {ast.Add: "Add", ast.Mult: "Mul", ast.MatMult: "MatMul"}
            self.ops.append(kinds.get(type(op), ""))

    def visit_For(self, node: ast.For) -> None:
        found = _over_modules(node)
        if found is None:
            self.visit(node.iter)
        items: list[list[str] | None] = [None]
        if found is not None:
            items = self.scope.attrs.get(found[1], [None])[:32]  # type: ignore[assignment]
        if empty_iterable(node.iter, self.scope.consts):
            items = []  # `for _ in []:` runs only its `else`
        for item in items:  # `for block in self.blocks:` runs the body once per block
            if item is not None and found is not None:
                self.loops[found[0]] = item
            for stmt in live(node.body):
                self.visit(stmt)
        for stmt in live(node.orelse):
            self.visit(stmt)

    def visit_Lambda(self, node: ast.Lambda) -> None:  # not evaluated where defined
        return None

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr in SHAPE_METHODS:
            self.visit(node.func)  # arguments are shapes: their arithmetic is not an op
        else:
            self.generic_visit(node)
        scope, func = self.scope, node.func
        if isinstance(func, ast.Subscript):
            func = func.value  # self.blocks[i](x): whatever the container holds
        qual = scope.reader.qual(func)
        head, _, rest = qual.partition(".")
        helper = None  # a function or lambda of forward's or the module's: `act(x)`
        if isinstance(func, ast.Name):
            helper = self.local.get(func.id) or scope.reader.functions.get(func.id)
        if helper is not None or isinstance(func, ast.Lambda):  # `(lambda t: F.relu(t))(x)`
            if self.depth < 8:
                self._inline(helper or func)  # type: ignore[arg-type]
        elif isinstance(func, ast.Name) and func.id in self.loops:
            self.ops += scope.reader.spend(self.loops[func.id])
        elif isinstance(func, ast.Name) and func.id in scope.reader.instances:  # MODEL(x)
            self.ops += scope.reader.spend([op for item in scope.items(func) for op in item])
        elif head == "self" and rest and "." not in rest:
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Name) and first.id in self.saved:
                self.ops.append("Proj")  # a layer on the skip path (projection, downsample)
                self.scope.proj.add(rest)
            elif rest in scope.attrs:
                self.ops += scope.reader.spend([op for item in scope.attrs[rest] for op in item])
            elif (fn := scope.reader.method(scope.cls, rest)) is not None and self.depth < 8:
                self._inline(fn)
            else:
                self.ops.append("?")
        elif (fn := scope.reader.base_method(scope.cls, node)) or _on_super(func):
            if fn is not None and self.depth < 8:  # super().forward(x), Base.forward(self, x)
                self._inline(fn)
            else:
                self.ops.append("?")
        elif (fn := scope.reader.class_method(qual)) is not None:  # `Net.act(x)`
            if self.depth < 8:
                self._inline(fn)
        elif qual.startswith("torch.nn.functional.") or qual.startswith("torch."):
            self.ops.append(op_name(qual.rsplit(".", 1)[-1], node, 1, scope.consts))
        elif isinstance(func, ast.Attribute) and head not in scope.reader.alias:
            quiet = func.attr in QUIET_METHODS  # else a tensor method: x.mean(...), x.view(...)
            self.ops.append("" if quiet else op_name(func.attr, node, 0, scope.consts))


def _over_modules(loop: ast.For) -> tuple[str, str] | None:
    """(loop variable, attribute) of a loop over the modules `self.<attribute>` holds: `for m in
    self.f`, also `in self.f.values()`, `in self.f.children()`, `for i, m in enumerate(self.f)`
    (read as unresolved, these let a copy of a known network pass as novel: 0.96-0.97)."""
    it, target = loop.iter, loop.target
    if isinstance(it, ast.Call) and dotted_name(it.func) == "enumerate" and len(it.args) == 1:
        elts = target.elts if isinstance(target, ast.Tuple) else []
        it, target = it.args[0], elts[1] if len(elts) == 2 else target
    if isinstance(it, ast.Call) and not it.args and isinstance(it.func, ast.Attribute):
        it = it.func.value if it.func.attr in ("values", "children") else it
    if isinstance(target, ast.Name) and dotted_name(it).startswith("self."):
        return target.id, it.attr  # type: ignore[attr-defined]
    return None


def _on_super(func: ast.AST) -> bool:
    """Whether `func` is `super().<name>`."""
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Call)
        and dotted_name(func.value.func) == "super"
    )


def _module_level(tree: ast.Module) -> list[ast.AST]:
    """The module's own statements, also inside its `if`/`try`/`with`, not inside a function
    or class (an import there binds only there)."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        found.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            todo += [
                c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt | ast.excepthandler)
            ]
    return found


def _known(consts: dict) -> dict:
    """`consts` less the names bound to UNKNOWN (parameters of unknown value)."""
    return {k: v for k, v in consts.items() if v is not UNKNOWN}
