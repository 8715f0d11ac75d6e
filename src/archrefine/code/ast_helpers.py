"""Small AST helpers that `static_check` (code.py) and the fingerprint reader share.

Their own module so that code.py and fingerprint.py both import these public names and neither
reaches into the other's private ones. Everything here reads an AST; nothing runs the code.
"""

from __future__ import annotations

import ast
import hashlib
import operator
from collections.abc import Iterator

__all__ = [
    "UNKNOWN",
    "CodeError",
    "arg_node",
    "bind_literal",
    "bind_target",
    "dotted_name",
    "find_method",
    "is_sequential",
    "literal_arg",
    "literal_value",
    "parse_source",
    "preorder",
    "return_values",
    "syntax_message",
    "target_names",
]


class CodeError(ValueError):
    """A response holds no usable code, or code that cannot be read; the message is one line."""


def syntax_message(err: Exception) -> str:
    """Why a source cannot be parsed, in one line (a line number where there is one)."""
    if isinstance(err, SyntaxError) and err.lineno is not None:
        return f"line {err.lineno}: {err.msg}"
    if isinstance(err, RecursionError | MemoryError):
        return "source is nested too deeply to read"
    return " ".join(str(getattr(err, "msg", None) or err).split())


UNKNOWN = object()  # what `literal_value` returns for anything not a known constant


def source_key(source: str, *extra: object) -> tuple:
    """A cache key for reading `source` with settings `extra`: the text's SHA-256, so a cache
    never holds the (up to 200 KB) source itself; a lone surrogate hashes as itself."""
    return (*extra, hashlib.sha256(source.encode("utf-8", "surrogatepass")).digest())


MAX_LITERAL = 32
"""Most scalars a constant holds (tuples and lists, nested or not, dicts and sets), and most
characters of a string in one: `K2 = (K1, K1)` nests each named constant twice in the next, so
1.5 KB of source made 2**59 items to compare, hash and print (the loop's process hung), and a
100 KB string named in 3,000 layers made a gigabyte of op names."""
MAX_NESTING = 8  # lists and tuples in each other: an honest constant has two or three


def parse_source(source: str) -> ast.Module:
    """The source's AST; CodeError (one line) when it cannot be read, however it fails."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise CodeError(syntax_message(err)) from None


def dotted_name(node: ast.AST) -> str:
    """`a.b.c` for a chain of attributes on a name; "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := dotted_name(node.value)):
        return f"{base}.{node.attr}"
    return ""


def find_method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    """The method `name` defined directly in the class body, else None."""
    return next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def is_sequential(cls: ast.ClassDef) -> bool:
    """Whether the class derives from (nn.)Sequential, so needs no forward of its own."""
    return any(dotted_name(b).split(".")[-1] == "Sequential" for b in cls.bases)


def return_values(fn: ast.FunctionDef) -> list[ast.AST]:
    """Every expression the function returns, in source order."""
    return [n.value for s in fn.body for n in preorder(s) if isinstance(n, ast.Return) and n.value]


def preorder(node: ast.AST) -> Iterator[ast.AST]:
    """Nodes in source order (ast.walk goes breadth-first)."""
    yield node
    for child in ast.iter_child_nodes(node):
        yield from preorder(child)


def literal_value(node: ast.AST, consts: dict, _depth: int = 0) -> object:
    """The value of a constant expression: literals, known names, + - * // on integers, an item
    of a known list or tuple. Lists and tuples nested more than `MAX_NESTING` deep are unknown:
    each level counted the scalars of all below it, so 1,000 lines of `[[[…]]]` 90 deep cost
    the loop's process 5 s."""
    if isinstance(node, ast.Name):
        return consts.get(node.id, UNKNOWN)
    if isinstance(node, ast.Tuple | ast.List):
        if len(node.elts) > MAX_LITERAL or _depth >= MAX_NESTING:
            return UNKNOWN
        items = [literal_value(e, consts, _depth + 1) for e in node.elts]
        if any(i is UNKNOWN for i in items) or _scalars(items) > MAX_LITERAL:
            return UNKNOWN
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
        seq, i = literal_value(node.value, consts, _depth + 1), literal_value(node.slice, consts)
        ok = isinstance(seq, tuple | list) and isinstance(i, int) and not isinstance(i, bool)
        return seq[i] if ok and -len(seq) <= i < len(seq) else UNKNOWN  # `W[i + 1]`
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        a, b = literal_value(node.left, consts), literal_value(node.right, consts)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b))
        if not ints or (b == 0 and isinstance(node.op, ast.FloorDiv)):
            return UNKNOWN
        value = _ARITH[type(node.op)](a, b)
        return value if abs(value) < 2**63 else UNKNOWN
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return UNKNOWN
    return value if _scalars(value) <= MAX_LITERAL else UNKNOWN


def _scalars(value: object) -> int:
    """How many scalars `value` holds (more than MAX_LITERAL for a long string or an integer
    past 64 bits). Cheap: the items of a constant were each checked when it was built."""
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, tuple | list | set | frozenset):
        return sum(_scalars(v) for v in value) if len(value) <= MAX_LITERAL else MAX_LITERAL + 1
    if isinstance(value, str | bytes):
        return 1 if len(value) <= MAX_LITERAL else MAX_LITERAL + 1
    if isinstance(value, int):
        return 1 if abs(value) < 2**63 else MAX_LITERAL + 1
    return 1


_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.FloorDiv: operator.floordiv}  # fmt: skip


def bind_literal(stmt: ast.AST, consts: dict) -> None:
    """Record `name = <constant expression>` in `consts`, so later arguments can use it."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0]
        if isinstance(target, ast.Name) and (v := literal_value(stmt.value, consts)) is not UNKNOWN:
            consts[target.id] = v


def arg_node(call: ast.Call, pos: int, kw: str) -> ast.AST | None:
    """The expression passed as keyword `kw` or positional `pos`, else None."""
    node = next((k.value for k in call.keywords if k.arg == kw), None)
    if node is None and pos < len(call.args) and not isinstance(call.args[pos], ast.Starred):
        node = call.args[pos]
    return node


def literal_arg(call: ast.Call, pos: int, kw: str, default: object, consts: dict) -> object:
    """Argument `kw` (or positional `pos`) as a literal; "?" when not a known constant."""
    node = arg_node(call, pos, kw)
    if node is None:
        return default
    value = literal_value(node, consts)
    if isinstance(value, tuple | list) and len(value) == 2 and value[0] == value[1]:
        value = value[0]  # square kernels, strides, paddings: (3, 3) reads as 3
    if isinstance(value, tuple | list):
        return tuple(value)
    return "?" if value is UNKNOWN or isinstance(value, bytes) else value


def target_names(target: ast.AST) -> list[str] | None:
    """The names a loop or comprehension target binds (`c`, `a, b`), None for anything else."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple) and all(isinstance(e, ast.Name) for e in target.elts):
        return [e.id for e in target.elts]  # type: ignore[attr-defined]
    return None


def bind_target(target: ast.AST, value: object, consts: dict) -> None:
    """Bind a loop variable (or a tuple of them) to a constant; unknown leaves them unbound.
    Another target (`self.k`, `q[0]`, `[a]`) binds no name this reads, and its names none."""
    names = target_names(target)
    if names is None:
        for n in ast.walk(target):
            if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
                consts.pop(n.id, None)
        return
    if isinstance(target, ast.Tuple):
        ok = isinstance(value, tuple | list) and len(value) == len(names)
        values = list(value) if ok else [UNKNOWN] * len(names)  # type: ignore[arg-type]
    else:
        values = [value]
    for name, v in zip(names, values, strict=True):
        if v is UNKNOWN:
            consts.pop(name, None)
        else:
            consts[name] = v
