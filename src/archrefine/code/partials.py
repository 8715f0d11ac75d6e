"""`functools.partial`, seen through: part of the rewrite before a source is read
(`archrefine.code.aliases`).

`conv3 = partial(nn.Conv2d, kernel_size=3, padding=1)` then `conv3(32, 64)` runs
`nn.Conv2d(32, 64, kernel_size=3, padding=1)`; read as a call of `partial`'s result, a copy of
`resnet` so written lost its convolutions (novelty 0.45-0.51, past the near-duplicate filter).
A partial is followed only where what it holds is fixed when it is made (constants, module
constants bound once, aliases' dotted names), so that copying it to where it is called reads
what runs.
"""

from __future__ import annotations

import ast
import collections
import contextlib

from archrefine.code.ast_helpers import dotted_name
from archrefine.code.scopes import dotted_within

__all__ = ["applied", "flat", "is_partial", "partial_names"]


def partial_names(tree: ast.Module, counts: collections.Counter) -> frozenset[str]:
    """The dotted names that can only be `functools.partial`: `functools.partial` itself
    where nothing binds `functools` but an import of it (a function's own `from functools
    import partial` reads as that), and the names a module-level import binds to it (once)."""
    found = {"functools.partial"} if counts["functools"] <= 1 else set()
    for node in tree.body:
        for a in (
            getattr(node, "names", []) if isinstance(node, ast.Import | ast.ImportFrom) else []
        ):
            name = a.asname or a.name.split(".")[0]
            if counts[name] != 1:
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "functools" and not node.level:
                found |= {name} if a.name == "partial" else set()
            elif isinstance(node, ast.Import) and a.name == "functools":
                found.add(f"{name}.partial")
    if counts["functools"] == 1 and not any(
        isinstance(n, ast.Import) and any(a.name == "functools" and not a.asname for a in n.names)
        for n in ast.walk(tree)
    ):
        found.discard("functools.partial")  # `functools` is something else here
    return frozenset(found)


def _fixed(node: ast.AST, roots: frozenset, consts: dict) -> bool:
    """A constant (also a tuple of them), a module constant bound once or an alias's dotted
    name: the same where `partial` is made and where it is called."""
    if dotted_within(node, roots) or (isinstance(node, ast.Name) and node.id in consts):
        return True
    with contextlib.suppress(ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        ast.literal_eval(node)
        return True
    return False


def is_partial(node: ast.AST | None, names: frozenset, roots: frozenset, consts: dict) -> bool:
    """Whether `node` is `functools.partial(f, ...)` (`names`: how the source spells it) of an
    alias's dotted name `f` on `roots`, or of such a partial made of one (`partial(partial(f,
    a), b)`: deeper nesting is not followed), with every argument fixed."""
    if not (isinstance(node, ast.Call) and dotted_name(node.func) in names):
        return False
    if not node.args or any(k.arg is None or not _fixed(k.value, roots, consts)
                            for k in node.keywords):  # fmt: skip
        return False
    first, *rest = node.args
    if isinstance(first, ast.Call):  # one level: its function must be a dotted name
        if not (dotted_name(first.func) in names and first.args):
            return False
        if not is_partial(first, names, roots, consts) or isinstance(first.args[0], ast.Call):
            return False
    elif not dotted_within(first, roots):
        return False
    return all(_fixed(a, roots, consts) for a in rest)


def applied(partial: ast.Call, args: list[ast.expr], keywords: list[ast.keyword]) -> ast.Call:
    """What calling `partial` with `args` and `keywords` calls: its function, its arguments
    first, the call's keywords winning over its own (as `partial` merges them)."""
    named = {k.arg for k in keywords}
    kept = [k for k in partial.keywords if k.arg not in named]
    return ast.Call(partial.args[0], partial.args[1:] + args, kept + keywords)


def flat(partial: ast.Call) -> ast.Call:
    """`partial(partial(f, a, k=1), b, k=2)` as the one partial it is: `partial(f, a, b, k=2)`."""
    inner = partial.args[0]
    if not isinstance(inner, ast.Call):
        return partial
    call = applied(inner, partial.args[1:], partial.keywords)
    return ast.Call(partial.func, [call.func, *call.args], call.keywords)
