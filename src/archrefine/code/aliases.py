"""See through names that stand for torch's layers: a rewrite of the AST before it is read.

A copy of a known network written with `Conv = nn.Conv2d` (at module level or in `__init__`),
`act = F.relu`, `getattr(nn, "Conv2d")(...)` or `getattr(F, "relu")(x)` runs exactly that
network, but the fingerprint's reader, which knows torch's layers by their dotted names, left
those layers out: `resnet` so written read as a network of batch norms and scored novelty
0.26-0.37, past the near-duplicate filter. `resolve` rewrites such indirections into the names
they stand for, so the reader sees what runs. Nothing is executed: a name is replaced only where
Python would find that binding (a function sees its own bindings in order, else its module's
last one; a class body runs in order), and only by a dotted name of at most `MAX_PARTS` parts
rooted at an import or a class of the source.
"""

from __future__ import annotations

import ast
import contextlib
import keyword

from archrefine.code.ast_helpers import bind_literal
from archrefine.code.reachable import taken

__all__ = ["MAX_PARTS", "resolve"]

MAX_PARTS = 5
"""Most parts of a dotted name an alias stands for (`torch.nn.functional.relu` has 4): aliases
of aliases (`A2 = A1.x`, `A3 = A2.x`, ...) would otherwise grow the tree quadratically."""


def resolve(tree: ast.Module) -> ast.Module:
    """`tree`, rewritten in place: `getattr(obj, "name"[, default])` with a constant name is
    `obj.name`, and a name bound to a dotted name rooted at an import or a local class (an
    alias) is replaced by that dotted name wherever it is read."""
    consts: dict[str, object] = {}
    for stmt in tree.body:
        bind_literal(stmt, consts)
    roots, bound = set(), set()  # imports and classes; every name the source binds
    for n in ast.walk(tree):
        if isinstance(n, ast.Import | ast.ImportFrom):
            roots |= {a.asname or a.name.split(".")[0] for a in n.names} - {"*"}
        elif isinstance(n, ast.ClassDef):
            roots.add(n.name)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ExceptHandler):
            bound.add(n.name)
        elif isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            bound.add(n.id)
        elif isinstance(n, ast.arg):
            bound.add(n.arg)
    builtins = {f: BUILTINS[f] for f in BUILTINS if f not in bound | roots}
    tree = _Spell(consts, builtins).visit(tree)
    _scope(tree.body, {}, frozenset(roots), consts)
    return tree


class _Chains(ast.NodeTransformer):
    """A chain of attributes is walked in a loop, not a call per link: 190 KB of `torch.b.b…`
    at module level (which the reader never descends) ran out of stack."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        link = node
        while isinstance(link.value, ast.Attribute):
            link = link.value
        link.value = self.visit(link.value)
        return node


BUILTINS = {"int": int, "bool": bool, "float": float, "abs": abs, "len": len, "min": min,
            "max": max}  # fmt: skip
"""Builtins folded on constant arguments (`bias=bool(1)`, `int(32.0)`, `max(16, 32)`), unless
the source binds the name itself."""


class _Spell(_Chains):
    """Spell calls out as the reader knows them: `getattr(nn, "Conv2d")` → `nn.Conv2d` (also a
    module-level string constant as the name); `f(*[32, 3], **{"k": 1})` → `f(32, 3, k=1)`
    (a literal display only); a builtin of `BUILTINS` on constants → its value."""

    def __init__(self, consts: dict[str, object], builtins: dict) -> None:
        self.consts, self.builtins = consts, builtins

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        args: list[ast.expr] = []
        for a in node.args:
            spread = isinstance(a, ast.Starred) and isinstance(a.value, ast.List | ast.Tuple)
            args += a.value.elts if spread else [a]  # type: ignore[attr-defined]
        keywords: list[ast.keyword] = []
        for k in node.keywords:
            keywords += _spread(k, {k.arg for k in node.keywords if k.arg}) or [k]
        node.args, node.keywords = args, keywords
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        if (fn := self.builtins.get(name)) and not node.keywords:
            with contextlib.suppress(ValueError, TypeError, SyntaxError, MemoryError,
                                     RecursionError, OverflowError):  # fmt: skip
                values = [ast.literal_eval(a) for a in node.args]
                if all(isinstance(v, int | float) for v in values) or fn is len:
                    value = fn(*values)
                    if isinstance(value, int | float) and abs(value) < 2**63:
                        return ast.copy_location(ast.Constant(value), node)
        if not (name == "getattr" and len(node.args) in (2, 3)):
            return node
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            return node
        name = node.args[1]
        if isinstance(name, ast.Name):
            value = self.consts.get(name.id)
        else:
            value = name.value if isinstance(name, ast.Constant) else None
        if not (isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value)):
            return node
        return ast.copy_location(ast.Attribute(node.args[0], value, ast.Load()), node)


def _scope(body: list[ast.stmt], env: dict, roots: frozenset, consts: dict) -> None:
    """Rewrite one function's (or the module's) statements in order, starting from `env`;
    then each function defined in them, which sees this scope's bindings as they end."""
    sub = _Substitute(env, roots, consts)
    body[:] = [sub.visit(stmt) for stmt in body]
    for fn in sub.deferred:
        inner = {k: v for k, v in sub.env.items() if k not in _locals(fn)}
        if isinstance(fn, ast.Lambda):  # its body: one expression, read as a scope's return
            ret = [ast.Return(fn.body)]
            _scope(ret, inner, roots, consts)  # type: ignore[arg-type]
            fn.body = ret[0].value  # type: ignore[attr-defined]
        else:
            _scope(fn.body, inner, roots, consts)


class _Substitute(_Chains):
    """Replaces aliases where they are read, and follows which names are aliases, in order."""

    def __init__(self, env: dict, roots: frozenset, consts: dict) -> None:
        self.env, self.roots, self.consts = dict(env), roots, consts
        self.deferred: list[ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda] = []

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.env:
            return self.env[node.id]  # shared, not copied: the tree is only read from here on
        return node

    def _bind(self, target: ast.AST, value: ast.AST | None = None) -> None:
        """`target` is (re)bound: to `value` if that is an alias's dotted name, else to nothing
        this rewrite follows."""
        names = [n.id for n in ast.walk(target) if isinstance(n, ast.Name)
                 and isinstance(n.ctx, ast.Store)]  # fmt: skip
        for name in names:
            self.env.pop(name, None)
        parts, base = 0, value
        while isinstance(base, ast.Attribute) and parts < MAX_PARTS:
            parts, base = parts + 1, base.value
        if isinstance(target, ast.Name) and isinstance(base, ast.Name) and base.id in self.roots:
            self.env[target.id] = value

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        node.value = self.visit(node.value)
        node.targets = [self.visit(t) for t in node.targets]
        for target in node.targets:
            self._bind(target, node.value)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        self.generic_visit(node)
        self._bind(node.target, node.value)
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        self.generic_visit(node)
        self._bind(node.target)
        return node

    def visit_NamedExpr(self, node: ast.NamedExpr) -> ast.AST:
        self.generic_visit(node)
        self._bind(node.target, node.value)
        return node

    def visit_For(self, node: ast.For | ast.AsyncFor) -> ast.AST:
        node.iter = self.visit(node.iter)
        self._bind(node.target)
        node.body = [self.visit(s) for s in node.body]
        node.orelse = [self.visit(s) for s in node.orelse]
        return node

    visit_AsyncFor = visit_For

    def visit_If(self, node: ast.If | ast.While) -> ast.AST:
        body = taken(node, self.consts)
        node.test = self.visit(node.test)
        for part in ("body", "orelse"):  # a branch that never runs binds nothing
            runs = body is None or body is getattr(node, part)
            keep = self.env
            if not runs:
                self.env = dict(self.env)
            setattr(node, part, [self.visit(s) for s in getattr(node, part)])
            self.env = keep
        return node

    visit_While = visit_If

    def visit_withitem(self, node: ast.withitem) -> ast.AST:
        node.context_expr = self.visit(node.context_expr)
        if node.optional_vars is not None:
            self._bind(node.optional_vars)
        return node

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        self.generic_visit(node)
        if node.name:
            self.env.pop(node.name, None)
        return node

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> ast.AST:
        for a in node.names:
            self.env.pop(a.asname or a.name.split(".")[0], None)
        return node

    visit_ImportFrom = visit_Import

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        """Its decorators and defaults now; its body once this scope's bindings are known."""
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.args = self._defaults(node.args)
        self.env.pop(node.name, None)
        self.deferred.append(node)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        node.args = self._defaults(node.args)
        self.deferred.append(node)
        return node

    def _defaults(self, args: ast.arguments) -> ast.arguments:
        args.defaults = [self.visit(d) for d in args.defaults]
        args.kw_defaults = [d if d is None else self.visit(d) for d in args.kw_defaults]
        return args

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        """Its body runs now, in order, in a namespace of its own; its methods see the enclosing
        scope's bindings, not the class body's."""
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        node.keywords = [self.visit(k) for k in node.keywords]
        body = _Substitute(self.env, self.roots, self.consts)
        node.body = [body.visit(s) for s in node.body]
        self.deferred += body.deferred
        self.env.pop(node.name, None)
        return node

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp) -> ast.AST:
        """The comprehension's own variables hide aliases of the same name inside it."""
        keep = self.env
        self.env = dict(keep)
        for gen in node.generators:
            gen.iter = self.visit(gen.iter)
            self._bind(gen.target)
            gen.ifs = [self.visit(i) for i in gen.ifs]
        for part in ("elt", "key", "value"):
            if hasattr(node, part):
                setattr(node, part, self.visit(getattr(node, part)))
        self.env = keep
        for walrus in _walruses(node):  # binds in the enclosing scope
            self._bind(walrus.target, walrus.value)
        return node

    visit_SetComp = visit_GeneratorExp = visit_DictComp = visit_ListComp


def _locals(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    """Names local to `fn`: its parameters and what its own body binds (Python decides this for
    the whole body, before it runs), less those it declares global or nonlocal."""
    a = fn.args
    names = {p.arg for p in a.posonlyargs + a.args + a.kwonlyargs}
    names |= {p.arg for p in (a.vararg, a.kwarg) if p is not None}
    if isinstance(fn, ast.Lambda):
        return names
    outer: set[str] = set()
    todo: list[ast.AST] = list(fn.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)  # its body is a scope of its own
            continue
        if isinstance(node, ast.Lambda):
            continue  # idem
        if isinstance(node, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            names |= {w.target.id for w in _walruses(node)}  # its own scope, but a walrus
            continue  # in it binds here
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            outer |= set(node.names)
        todo.extend(ast.iter_child_nodes(node))
    return names - outer


def _walruses(comp: ast.AST) -> list[ast.NamedExpr]:
    return [n for n in ast.walk(comp) if isinstance(n, ast.NamedExpr)]


def _spread(k: ast.keyword, named: set) -> list[ast.keyword] | None:
    """`**{"c": 32}` as `c=32`: a dict display of distinct identifier strings, none of them
    also given by name (Python would raise); else None."""
    if k.arg is not None or not isinstance(k.value, ast.Dict):
        return None
    keys = [key.value if isinstance(key, ast.Constant) else None for key in k.value.keys]
    if not all(isinstance(key, str) and key.isidentifier() for key in keys):
        return None
    if len(set(keys)) != len(keys) or set(keys) & named:
        return None
    return [ast.keyword(arg=key, value=v) for key, v in zip(keys, k.value.values, strict=True)]
