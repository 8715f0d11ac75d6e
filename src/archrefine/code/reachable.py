"""What of model-written code can run, read from its AST alone: the fingerprint follows only it.

A copy of a network padded with code that never runs (`if False:`, statements after `return`, a
loop over `[]`) or with ops that change nothing (`x.view(x.shape)`) must read as the same network
(docs/real-loop.md, "structural twins"). Each helper answers one such question conservatively:
when the answer depends on run time, the code counts as live.
"""

from __future__ import annotations

import ast

from archrefine.code.ast_helpers import UNKNOWN, dotted_name, literal_value

__all__ = ["empty_iterable", "live", "same_shape_view", "taken", "truth"]


def live(stmts: list) -> list:
    """The statements of a block that can run: up to its first `return`, `raise`, `break` or
    `continue` (what follows one is dead code, however many ops it names)."""
    for i, stmt in enumerate(stmts):
        if isinstance(stmt, ast.Return | ast.Raise | ast.Break | ast.Continue):
            return stmts[: i + 1]
    return stmts


def truth(test: ast.AST, consts: dict) -> bool | None:
    """Whether a test that is a constant (`False`, `0`, `not True`, a module-level `DEBUG`) is
    true; None when it is decided at run time."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = truth(test.operand, consts)
        return None if inner is None else not inner
    value = literal_value(test, consts)
    return None if value is UNKNOWN else bool(value)


def taken(stmt: ast.If | ast.While, consts: dict) -> list | None:
    """The statements that run of an `if`/`while` whose test is a constant (an `if`'s branch; a
    false `while`'s `else`; one pass of a true one); None when the test is not a constant."""
    test = truth(stmt.test, consts)
    if test is None:
        return None
    return stmt.body if test else stmt.orelse


def empty_iterable(node: ast.AST, consts: dict) -> bool:
    """Whether an iterable is a constant with no items (`[]`, `()`, `range(0)`)."""
    if isinstance(node, ast.Call) and dotted_name(node.func) == "range" and not node.keywords:
        bounds = [literal_value(a, consts) for a in node.args]
        if bounds and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
            try:
                return len(range(*bounds)) == 0  # type: ignore[arg-type]
            except (ValueError, OverflowError, TypeError):  # `range(1, 2, 3, 4)`
                return False
        return False
    value = literal_value(node, consts)
    return isinstance(value, list | tuple | str | dict | set | frozenset) and not value


def same_shape_view(call: ast.Call, offset: int) -> bool:
    """Whether a view/reshape gives its tensor its own shape: `x.view(x.shape)`,
    `x.reshape(*x.size())`, `x.view_as(x)`, `torch.reshape(x, x.shape)`."""
    if offset == 0 and isinstance(call.func, ast.Attribute):
        tensor, rest = call.func.value, call.args
    elif offset == 1 and call.args:
        tensor, rest = call.args[0], call.args[1:]
    else:
        return False
    if len(rest) != 1 or call.keywords:
        return False
    shape = rest[0].value if isinstance(rest[0], ast.Starred) else rest[0]
    if isinstance(shape, ast.Attribute) and shape.attr == "shape":
        shape = shape.value
    elif isinstance(shape, ast.Call) and dotted_name(shape.func).endswith(".size"):
        shape = (
            shape.func.value if not shape.args and isinstance(shape.func, ast.Attribute) else None
        )
    return shape is not None and ast.dump(shape) == ast.dump(tensor)
