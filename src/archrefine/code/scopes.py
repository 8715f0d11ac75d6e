"""Which binding a name has where, read from the AST alone (for `archrefine.code.aliases`).

Python decides a function's local names for its whole body before it runs, looks a method's
`self.x` up on the instance and then its class, and evaluates defaults where the function is
defined; a rewrite that replaces names by what they stand for has to agree with all of it, or
it reads another network than the one that runs (a red-team review found 12 such ways).
"""

from __future__ import annotations

import ast
import collections

from archrefine.code.ast_helpers import CodeError, dotted_name

__all__ = [
    "MAX_PARTS",
    "Steps",
    "agree",
    "binding_counts",
    "defaults_of",
    "dotted_within",
    "facts",
    "local_names",
    "module_path",
    "receiver",
    "type_of",
]

MAX_PARTS = 5
"""Most parts of a dotted name an alias stands for (`torch.nn.functional.relu` has 4): aliases
of aliases (`A2 = A1.x`, `A3 = A2.x`, ...) would otherwise grow the tree quadratically."""
_NAMED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.ExceptHandler, ast.MatchAs,
          ast.MatchStar)  # fmt: skip


def binding_counts(tree: ast.AST) -> collections.Counter:
    """How often each name is bound anywhere in `tree` (assignments, parameters, imports,
    `def`/`class`, `except ... as`, `match` captures, `global`/`nonlocal`): a name bound once
    means the same thing wherever it is read."""
    counts: collections.Counter = collections.Counter()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
            counts[n.id] += 1
        elif isinstance(n, _NAMED) and n.name:
            counts[n.name] += 1
        elif isinstance(n, ast.MatchMapping) and n.rest:
            counts[n.rest] += 1
        elif isinstance(n, ast.arg):
            counts[n.arg] += 1
        elif isinstance(n, ast.Import | ast.ImportFrom):
            counts.update(a.asname or a.name.split(".")[0] for a in n.names)
        elif isinstance(n, ast.Global | ast.Nonlocal):
            counts.update({name: 2 for name in n.names})  # rebound from elsewhere
    return counts


def facts(tree: ast.Module, counts: collections.Counter) -> tuple[frozenset, ...]:
    """What a rewrite needs of the whole source, in one walk: the roots an alias may start from
    (the module's imports, local classes bound once, a module named only as an import's head:
    `torch` of `from torch import nn`), every attribute name assigned anywhere, and the names
    never aliases (assigned through `global`/`nonlocal`, or mangled: `__x`)."""
    roots = {a.asname or a.name.split(".")[0] for n in tree.body
             if isinstance(n, ast.Import | ast.ImportFrom) for a in n.names} - {"*"}  # fmt: skip
    stored: set[str] = set()
    unstable = {name for name, n in counts.items() if name.startswith("__") and n}
    for n in ast.walk(tree):
        if isinstance(n, ast.ClassDef) and counts[n.name] == 1:
            roots.add(n.name)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            heads = (((n.module or "") if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                     for a in n.names)  # fmt: skip
            roots |= {h for h in heads if h and not counts[h]}
        elif isinstance(n, ast.Global | ast.Nonlocal):
            unstable |= set(n.names)
        elif isinstance(n, ast.Attribute) and not isinstance(n.ctx, ast.Load):
            stored.add(n.attr)
    return frozenset(roots), frozenset(stored), frozenset(unstable)


def dotted_within(node: ast.AST | None, roots: frozenset) -> bool:
    """Whether `node` is a dotted name of at most `MAX_PARTS` parts on one of `roots`."""
    parts = 0
    while isinstance(node, ast.Attribute) and parts < MAX_PARTS:
        parts, node = parts + 1, node.value
    return isinstance(node, ast.Name) and node.id in roots


def receiver(fn: ast.AST | None) -> str | None:
    """The name of a method's `self` (or `cls`), where nothing in it rebinds that name."""
    if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
        return None
    params = fn.args.posonlyargs + fn.args.args
    if not params or any(dotted_name(d) == "staticmethod" for d in fn.decorator_list):
        return None
    me = params[0].arg
    for n in ast.walk(fn):
        if isinstance(n, ast.Name) and n.id == me and not isinstance(n.ctx, ast.Load):
            return None
    return me


def defaults_of(fn: ast.AST, roots: frozenset) -> dict:
    """The parameters of `fn` whose defaults are aliases' dotted names."""
    a = fn.args  # type: ignore[attr-defined]
    every = a.posonlyargs + a.args
    pairs = list(zip(every[len(every) - len(a.defaults) :], a.defaults, strict=True))
    pairs += [(p, d) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d]
    return {p.arg: d for p, d in pairs if dotted_within(d, roots)}


def local_names(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
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
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)  # (also a walrus in a comprehension: it binds here)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            outer |= set(node.names)
        todo.extend(ast.iter_child_nodes(node))
    return names - outer


class Steps:
    """Work left of a budget; CodeError ("too intricate") when it runs out."""

    def __init__(self, budget: int) -> None:
        self.left = budget

    def spend(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise CodeError("source is too intricate to read (its names)")


def module_path(name: str) -> ast.expr:
    """`torch.nn.functional` as the dotted-name expression it is."""
    node: ast.expr = ast.Name(name.split(".")[0], ast.Load())
    for part in name.split(".")[1:]:
        node = ast.Attribute(node, part, ast.Load())
    return node


def agree(*envs: dict) -> dict:
    """The aliases every one of `envs` binds to the same thing."""
    first, *others = envs
    return {k: v for k, v in first.items() if all(o.get(k) is v for o in others)}


def type_of(node: ast.AST, me: str) -> bool:
    """Whether `node` is `type(me)`, a method's `self`'s class."""
    if not (me and isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return False
    one = len(node.args) == 1 and not node.keywords and node.func.id == "type"
    return one and isinstance(node.args[0], ast.Name) and node.args[0].id == me
