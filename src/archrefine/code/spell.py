"""Spell calls and constant lookups out as the fingerprint's reader knows them.

Part of the rewrite before a source is read (`archrefine.code.aliases.resolve`): each form here
means the same as what it is rewritten to wherever it stands, so no scope needs following.
`getattr(nn, "Conv2d")` is `nn.Conv2d`, `f(*[32, 3], **{"c": 1})` is `f(32, 3, c=1)`,
`bool(1)` is `True`, `{"c": nn.Conv2d}["c"]` is `nn.Conv2d`: each wrote a copy of a known
network that read with layers missing or unknown (novelty 0.25-0.45).
"""

from __future__ import annotations

import ast
import contextlib
import keyword

__all__ = ["BUILTINS", "Chains", "Spell"]

BUILTINS = {"int": int, "bool": bool, "float": float, "abs": abs, "len": len, "min": min,
            "max": max}  # fmt: skip
"""Builtins folded on constant arguments (`bias=bool(1)`, `int(32.0)`, `max(16, 32)`), unless
the source binds the name itself."""


class Chains(ast.NodeTransformer):
    """A transformer that walks a chain of attributes in a loop, not a call per link: 190 KB
    of `torch.b.b…` at module level (which the reader never descends) ran out of stack."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        link = node
        while isinstance(link.value, ast.Attribute):
            link = link.value
        link.value = self.visit(link.value)
        return node


class Spell(Chains):
    """The rewrite of the module docstring. `consts` are the module's constants bound once
    (a `getattr` name), `builtins` those of `BUILTINS` the source does not bind, `getattr_`
    whether it does not bind `getattr` either."""

    def __init__(self, consts: dict, builtins: dict, getattr_: bool) -> None:
        self.consts, self.builtins, self.getattr = consts, builtins, getattr_

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        args: list[ast.expr] = []
        for a in node.args:
            spread = isinstance(a, ast.Starred) and isinstance(a.value, ast.List | ast.Tuple)
            args += a.value.elts if spread else [a]  # type: ignore[attr-defined]
        named = {k.arg for k in node.keywords if k.arg}
        keywords: list[ast.keyword] = []
        for k in node.keywords:
            keywords += _spread(k, named) or [k]
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
        if not (name == "getattr" and self.getattr and len(node.args) == 2 and not node.keywords):
            return node  # with a default, a missing name would run the default
        if isinstance(attr := node.args[1], ast.Name):
            value = self.consts.get(attr.id)
        else:
            value = attr.value if isinstance(attr, ast.Constant) else None
        if not (isinstance(value, str) and value.isidentifier() and not keyword.iskeyword(value)):
            return node
        if value.startswith("__"):  # `self.__c` is `self._Net__c`; `getattr` is not mangled
            return node
        return ast.copy_location(ast.Attribute(node.args[0], value, ast.Load()), node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        """`{"c": nn.Conv2d}["c"]`, `[nn.Conv2d][0]`: a display of no `*`/`**`, a constant key."""
        self.generic_visit(node)
        box, key = node.value, node.slice
        if not (isinstance(node.ctx, ast.Load) and isinstance(key, ast.Constant)):
            return node
        found: ast.expr | None = None
        if isinstance(box, ast.Dict) and None not in box.keys:
            keys = [k.value if isinstance(k, ast.Constant) else None for k in box.keys]
            if all(isinstance(k, str) for k in keys) and keys.count(key.value) == 1:
                found = box.values[keys.index(key.value)]
        elif isinstance(box, ast.List | ast.Tuple) and type(key.value) is int:
            plain = not any(isinstance(e, ast.Starred) for e in box.elts)
            if plain and -len(box.elts) <= key.value < len(box.elts):
                found = box.elts[key.value]
        others = [n for n in ast.iter_child_nodes(box) if n is not found]
        if found is None or any(isinstance(n, ast.NamedExpr) for o in others for n in ast.walk(o)):
            return node  # the other items run too: a `:=` among them binds
        return found

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        """`None or v` → v, `True and v` → v: leading constants that decide nothing."""
        self.generic_visit(node)
        values = list(node.values)
        while len(values) > 1 and isinstance(values[0], ast.Constant):
            if bool(values[0].value) == isinstance(node.op, ast.Or):
                return values[0]  # `1 or v` is 1
            values.pop(0)
        node.values = values
        return values[0] if len(values) == 1 else node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.test, ast.Constant):
            return node.body if node.test.value else node.orelse
        return node


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
