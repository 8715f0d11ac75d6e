"""See through names that stand for torch's layers: a rewrite of the AST before it is read.

A copy of a known network written with `Conv = nn.Conv2d` (at module level or in `__init__`),
`act = F.relu`, `getattr(nn, "Conv2d")(...)` or `getattr(F, "relu")(x)` runs exactly that
network, but the fingerprint's reader, which knows torch's layers by their dotted names, left
those layers out: `resnet` so written read as a network of batch norms and scored novelty
0.26-0.37, past the near-duplicate filter. `resolve` rewrites such indirections into the names
they stand for, so the reader sees what runs. Nothing is executed, and where Python might find
another binding the name is left alone (read as unknown, as before): a function sees its own
bindings in order, else its module's as they end; branches that may or may not run keep only
the aliases they agree on; names rebound through `global`/`nonlocal` or mangled (`__x`) are
never aliases. The passes over the tree are linear in its size; copying the aliases known
(into each function, branch and comprehension) counts against the reader's budget.
"""

from __future__ import annotations

import ast
import collections

from archrefine.code.ast_helpers import bind_literal
from archrefine.code.partials import applied, flat, is_partial, partial_names
from archrefine.code.reachable import taken
from archrefine.code.scopes import (
    MAX_PARTS,
    Steps,
    agree,
    defaults_of,
    dotted_within,
    facts,
    local_names,
    module_path,
    receiver,
    type_of,
)
from archrefine.code.spell import BUILTINS, Chains, Spell

__all__ = ["resolve"]


def resolve(tree: ast.Module, budget: int, counts: collections.Counter) -> ast.Module:
    """`tree`, rewritten in place: `getattr(obj, "name")` with a constant name is `obj.name`;
    `f(*[a, b], **{"k": v})` is `f(a, b, k=v)`; a builtin of `BUILTINS` on constants is its
    value; `{"k": v}["k"]`, `[v][0]`, `None or v` and `v if True else w` are `v`; and a name
    bound to a dotted name rooted at an import or a local class (an alias) is replaced by that
    dotted name where it is read. `counts`: `binding_counts(tree)`, which the rewrite keeps.
    CodeError after `budget` aliases copied."""
    consts: dict[str, object] = {}  # module-level constants bound nowhere else
    for stmt in tree.body:
        bind_literal(stmt, consts)
    consts = {k: v for k, v in consts.items() if counts[k] == 1}
    builtins = {f: fn for f, fn in BUILTINS.items() if not counts[f]}
    tree = Spell(consts, builtins, "getattr" not in counts).visit(tree)
    _scope(tree.body, {}, _Context(tree, counts, consts, budget))
    return tree


class _Context:
    """What every scope's rewrite shares."""

    def __init__(self, tree: ast.Module, counts: collections.Counter, consts: dict, budget: int):
        self.roots, self.stored, self.unstable = facts(tree, counts)
        self.counts, self.consts, self.steps = counts, consts, Steps(budget)
        self.partial = partial_names(tree, counts)  # how the source spells functools.partial
        self.methods: dict[int, dict] = {}  # id of a method -> its class's own aliases
        self.classes: dict[str, dict] = {}  # a class bound once -> its own aliases (`Net.C`)
        self.entries: set[int] = set()  # `Net.__init__` and `Net.forward`, called with no
        # arguments but the input: their parameters' defaults are what runs


def _scope(
    body: list[ast.stmt],
    env: dict,
    ctx: _Context,
    hidden: set | None = None,
    owner: ast.FunctionDef | ast.AsyncFunctionDef | None = None,
) -> None:
    """Rewrite the statements of function `owner` (or, `hidden` None, of the module) in order,
    starting from `env`; then each function defined in them, which sees this scope's bindings
    as they end. `hidden`: the function's local names (an import's name among them is no root
    there)."""
    sub = _Substitute(env, ctx, hidden)
    if (me := receiver(owner)) is not None:
        sub.me, sub.attrs = me, ctx.methods.get(id(owner), {})
    body[:] = sub._block(body)
    for fn in sub.deferred:
        hidden = local_names(fn)
        ctx.steps.spend(len(sub.env))
        inner = {k: v for k, v in sub.env.items() if k not in hidden and ctx.counts[k] == 1}
        if id(fn) in ctx.entries:
            inner |= defaults_of(fn, sub.roots - ctx.unstable)
        if isinstance(fn, ast.Lambda):  # its body: one expression, read as a scope's return
            ret = [ast.Return(fn.body)]
            _scope(ret, inner, ctx, hidden)  # type: ignore[arg-type]
            fn.body = ret[0].value  # type: ignore[attr-defined]
        else:
            _scope(fn.body, inner, ctx, hidden, fn)


class _Substitute(Chains):
    """Replaces aliases where they are read, and follows which names are aliases, in order."""

    def __init__(self, env: dict, ctx: _Context, hidden: set | None) -> None:
        ctx.steps.spend(len(env))
        self.env, self.ctx, self.steps, self.module = dict(env), ctx, ctx.steps, hidden is None
        self.roots = ctx.roots - (hidden or set())
        self.me, self.attrs = "", {}  # a method's `self`, its class's own aliases
        self.deferred: list[ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda] = []
        self.maybe = 0  # inside `a or b`, `x if c else y`, a comprehension: may not run
        self.walrus: list[str] = []  # names bound by `:=`, which binds outside a comprehension

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        """`self.conv_cls` (or `type(self).conv_cls`, `Net.conv_cls`) where the class body says
        `conv_cls = nn.Conv2d`: nothing else in the source assigns an attribute of that name or
        binds it again, so that is what an instance, or the class, finds."""
        base, own = node.value, None
        if type_of(base, self.me) and not self.ctx.counts["type"]:  # the builtin `type`
            own = self.attrs
        elif isinstance(base, ast.Name):
            own = self.attrs if base.id == self.me else self.ctx.classes.get(base.id)
        if own is not None and node.attr in own:
            return own[node.attr] if isinstance(node.ctx, ast.Load) else node
        return super().visit_Attribute(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        """A call of a `functools.partial` this rewrite follows, as the call it makes; not where
        the call spreads `**` (which may or may not override the partial's keywords)."""
        self.generic_visit(node)
        while self._partial(node.func) and all(k.arg for k in node.keywords):
            node = ast.copy_location(applied(node.func, node.args, node.keywords), node)
        return node

    def _partial(self, node: ast.AST | None) -> bool:
        return is_partial(node, self.ctx.partial, self.roots, self.ctx.consts)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.env:
            return self.env[node.id]  # shared, not copied: the tree is only read from here on
        return node

    def _bind(self, target: ast.AST, value: ast.AST | None = None) -> None:
        """`target` is (re)bound: to `value` if that is an alias's dotted name, else to nothing
        this rewrite follows. `a, b = x, y` binds pairwise."""
        if isinstance(target, ast.Tuple | ast.List) and isinstance(value, ast.Tuple | ast.List):
            pairs = len(target.elts) == len(value.elts)
            if pairs and not any(isinstance(e, ast.Starred) for e in target.elts + value.elts):
                for t, v in zip(target.elts, value.elts, strict=True):
                    self._bind(t, v)
                return
        for n in ast.walk(target):
            if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
                self.env.pop(n.id, None)
        stable = isinstance(target, ast.Name) and target.id not in self.ctx.unstable
        if stable and not self.maybe and (dotted_within(value, self.roots) or self._partial(value)):
            self.env[target.id] = flat(value) if isinstance(value, ast.Call) else value  # type: ignore

    def _branches(self, *parts: list[ast.stmt]) -> list[list[ast.stmt]]:
        """Rewrite alternative blocks (any one of which may run), each from the same bindings;
        afterwards only the aliases all of them agree on stand."""
        start, ends, done = self.env, [], []
        for part in parts:
            self.steps.spend(len(start))
            self.env = dict(start)
            done.append(self._block(part))
            ends.append(self.env)
        self.env = agree(*ends)
        return done

    def _block(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        """Rewrite a block in order; what follows a `return`, `raise`, `break` or `continue`
        never runs, so its bindings are dropped (an exception a `with` suppresses went on
        to bind the name again, in no run)."""
        out, keep = [], None
        for stmt in stmts:
            out.append(self.visit(stmt))
            if keep is None and isinstance(stmt, ast.Return | ast.Raise | ast.Break | ast.Continue):
                keep = self.env
                self.steps.spend(len(keep))
                self.env = dict(keep)
        if keep is not None:
            self.env = keep
        return out

    def _without(self, stmts: list[ast.stmt]) -> dict:
        """The current bindings less every name `stmts` bind: what holds at any point in them
        (a loop's body on its next pass, a handler after part of its `try`)."""
        bound = {n.id for s in stmts for n in ast.walk(s)
                 if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}  # fmt: skip
        self.steps.spend(len(self.env) + len(bound))
        return {k: v for k, v in self.env.items() if k not in bound}

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
        self._bind(node.target, node.value)  # (not an alias where it may not run: `maybe`)
        self.walrus.append(node.target.id)
        return node

    def _maybe(self, node: ast.AST) -> ast.AST:
        self.maybe += 1
        try:
            return self.generic_visit(node)
        finally:
            self.maybe -= 1

    visit_BoolOp = visit_IfExp = _maybe

    def visit_Delete(self, node: ast.Delete) -> ast.AST:
        for target in node.targets:
            self._bind(target)
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        node.test = self.visit(node.test)
        runs = taken(node, self.ctx.consts)
        if runs is None:  # decided at run time: either branch
            node.body, node.orelse = self._branches(node.body, node.orelse)
            return node
        keep = self.env
        for part in ("body", "orelse"):  # a branch that never runs binds nothing
            dead = runs is not getattr(node, part) and getattr(node, part)
            self.steps.spend(len(keep) if dead else 0)
            self.env = dict(keep) if dead else keep
            setattr(node, part, self._block(getattr(node, part)))
        self.env = keep
        return node

    def _loop(self, node: ast.While | ast.For | ast.AsyncFor) -> ast.AST:
        """The body runs any number of times, from what holds on every pass; the `else` after
        none or all of them, unless a `break` skipped it. Each block is rewritten once (twice,
        nested loops doubled the work per level: 13 s for 22 levels of 4.6 KB)."""
        start = self.env
        self.env = self._without(node.body)
        node.body = self._block(node.body)
        self.env = agree(start, self.env)
        before = self.env
        node.orelse = self._block(node.orelse)
        self.env = agree(before, self.env)
        return node

    def visit_While(self, node: ast.While) -> ast.AST:
        node.test = self.visit(node.test)
        return self._loop(node)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> ast.AST:
        node.iter = self.visit(node.iter)
        self._bind(node.target)  # (not an alias: what an iterable holds is not followed)
        return self._loop(node)

    visit_AsyncFor = visit_For

    def visit_Try(self, node: ast.Try | ast.TryStar) -> ast.AST:
        """The body, or (after any part of it) a handler: only what all of them agree on."""
        for h in node.handlers:
            h.type = self.visit(h.type) if h.type is not None else None
        partway, ends = self._without(node.body), []
        node.body = self._block(node.body)
        node.orelse = self._block(node.orelse)
        ends.append(self.env)
        for h in node.handlers:
            self.env = dict(partway)
            h.body = self._block(h.body)
            if h.name:
                self.env.pop(h.name, None)
            ends.append(self.env)
        self.env = agree(*ends)
        node.finalbody = self._block(node.finalbody)
        return node

    visit_TryStar = visit_Try

    def visit_Match(self, node: ast.Match) -> ast.AST:
        node.subject = self.visit(node.subject)
        for case in node.cases:
            for n in ast.walk(case.pattern):
                name = getattr(n, "name", None) or getattr(n, "rest", None)
                if isinstance(name, str):
                    self.env.pop(name, None)
        guarded = [[ast.Expr(c.guard)] * (c.guard is not None) + c.body for c in node.cases]
        for case, body in zip(node.cases, self._branches(*guarded, []), strict=False):
            if case.guard is not None:
                case.guard, body = body[0].value, body[1:]  # type: ignore[attr-defined]
            case.body = body
        return node

    def visit_With(self, node: ast.With | ast.AsyncWith) -> ast.AST:
        """Its body may end at any statement (an exception its context manager suppresses)."""
        node.items = [self.visit(i) for i in node.items]
        start = self.env
        node.body = self._block(node.body)
        self.env = agree(start, self.env)
        return node

    visit_AsyncWith = visit_With

    def visit_withitem(self, node: ast.withitem) -> ast.AST:
        node.context_expr = self.visit(node.context_expr)
        if node.optional_vars is not None:
            self._bind(node.optional_vars)
        return node

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> ast.AST:
        """An import binds its name to a module or a name in one: inside a function, an alias
        (only there: the reader knows the module's own imports)."""
        for a in node.names:
            name = a.asname or a.name.split(".")[0]
            self.env.pop(name, None)
            if a.name == "*" or getattr(node, "level", 0) or self.module:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                path = f"{node.module}.{a.name}"
            else:
                path = a.name if a.asname else name
            if path.count(".") <= MAX_PARTS and name not in self.ctx.unstable:
                self.env[name] = module_path(path)
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
        body = _Substitute(self.env, self.ctx, set())  # its imports bind only there
        body.roots = self.roots
        node.body = body._block(node.body)
        self.deferred += body.deferred
        ctx = self.ctx
        own = {k: v for k, v in body.env.items() if self.env.get(k) is not v
               and ctx.counts[k] == 1 and k not in ctx.stored}  # fmt: skip
        if ctx.counts[node.name] == 1:
            ctx.classes[node.name] = own
        for fn in node.body:
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                ctx.methods[id(fn)] = own
                if self.module and node.name == "Net" and fn.name in ("__init__", "forward"):
                    ctx.entries.add(id(fn))
        self.env.pop(node.name, None)
        return node

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp) -> ast.AST:
        """Its own variables hide aliases of the same name inside it; it may run no pass."""
        keep, mark = self.env, len(self.walrus)
        self.steps.spend(len(keep))
        self.env = dict(keep)
        self.maybe += 1
        try:
            for gen in node.generators:
                gen.iter = self.visit(gen.iter)
                self._bind(gen.target)
                gen.ifs = [self.visit(i) for i in gen.ifs]
            for part in ("elt", "key", "value"):
                if hasattr(node, part):
                    setattr(node, part, self.visit(getattr(node, part)))
        finally:
            self.maybe -= 1
            self.env = keep
        for name in self.walrus[mark:]:  # `:=` binds in the enclosing scope
            self.env.pop(name, None)
        return node

    visit_SetComp = visit_GeneratorExp = visit_DictComp = visit_ListComp
