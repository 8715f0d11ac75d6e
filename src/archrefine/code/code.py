"""Model-written PyTorch code, read without running it: extract, filter, fingerprint.

`extract_code` pulls the code out of an LLM response; `static_check` rejects obvious junk before
it costs a sandbox run; `fingerprint` (in `archrefine.code.fingerprint`) describes the
network's structure from the AST alone, so duplicates can be found in this process (the code
itself only ever runs in `archrefine.sandbox.sandbox`); `to_tokens` (in
`archrefine.code.tokens`) maps that structure into the grounded vocabulary so code candidates
and simulated ones share one novelty/diversity yardstick. This module holds the small AST
helpers the fingerprint reader shares with `static_check`.
"""

from __future__ import annotations

import ast
import operator
import re
import textwrap
from collections.abc import Iterable, Iterator

__all__ = ["CodeError", "extract_code", "static_check"]

PYTHON_TAGS = frozenset({"python", "py", "python3", "pytorch"})
FORBIDDEN_NAMES = frozenset({"exec", "eval", "compile", "__import__", "open", "breakpoint"})
# fmt: off
FORBIDDEN_MODULES = frozenset({"os", "sys", "subprocess", "socket", "shutil", "ctypes",
                               "importlib", "builtins", "pickle", "marshal", "signal"})
# fmt: on
FORBIDDEN_TORCH = ("torch.hub", "torch.load", "torch.save", "torch.utils.cpp_extension")
SAFE_DUNDERS = frozenset({"__init__", "__call__", "__name__", "__main__", "__doc__", "__all__",
                          "__len__", "__getitem__"})  # fmt: skip
_DUNDER = re.compile(r"^__\w+__$")
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
_OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n", re.M)


class CodeError(ValueError):
    """A response holds no usable code, or code that cannot be read; the message is one line."""


def extract_code(response: str) -> str:
    """The code in an LLM `response`: the first ```python block, else the first ``` block,
    else the whole text if it parses as Python. A block cut off by the token limit (no closing
    fence) counts as running to the end. Raises CodeError when there is none."""
    if not isinstance(response, str) or not response.strip():
        raise CodeError("empty response")
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(response)]
    if not blocks and (opened := _OPEN_FENCE.search(response)):
        blocks = [(opened.group(1).lower(), response[opened.end() :])]
    if blocks:
        tag, body = next((b for b in blocks if b[0] in PYTHON_TAGS), blocks[0])
        code = textwrap.dedent(body).strip("\n")
        if not code.strip():
            raise CodeError(f"the ```{tag} block is empty")
        return code + "\n"
    try:
        ast.parse(response)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise CodeError(f"no ``` code block, and the text is not Python ({_syntax(err)})") from None
    return response


def static_check(
    source: str,
    *,
    allowed_imports: Iterable[str] = ("torch", "math", "collections", "functools", "typing"),
) -> list[str]:
    """Problems that make `source` not worth a sandbox run; empty when there are none.

    It must parse, define a top-level `class Net` with a `forward` method (inherited from
    `nn.Sequential` counts), import only `allowed_imports` (by top-level module), and avoid
    exec/eval/compile/__import__/open, os/sys/subprocess/socket and dunder attribute tricks.
    This is a filter for obvious junk, NOT a security boundary: hostile code can evade any
    static check, which is why every candidate still runs only inside the sandbox.
    """
    try:
        tree = _parse(source)
    except CodeError as err:
        return [str(err)]
    allowed = {name.split(".")[0] for name in allowed_imports}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        for module in _imports(node):
            top = module.split(".")[0]
            if top in FORBIDDEN_MODULES or top not in allowed or _torch_io(module):
                found.append((line, f"import of {_torch_io(module) or module!r} is not allowed"))
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append((line, "relative imports are not allowed"))
        if isinstance(node, ast.Name) and (
            node.id in FORBIDDEN_NAMES | FORBIDDEN_MODULES or _unsafe_dunder(node.id)
        ):
            found.append((line, f"use of {node.id!r} is not allowed"))
        if isinstance(node, ast.Attribute) and _unsafe_dunder(node.attr):
            found.append((line, f"access to attribute {node.attr!r} is not allowed"))
        if isinstance(node, ast.Attribute) and (prefix := _torch_io(_dotted(node))):
            found.append((line, f"use of {prefix!r} is not allowed"))
        if isinstance(node, ast.Constant) and _unsafe_dunder(node.value):
            found.append((line, f"string {node.value!r} is not allowed"))
    problems = [f"line {n}: {msg}" for n, msg in sorted(set(found))]
    net = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Net"), None)
    if net is None:
        problems.append("no top-level class Net")
    elif _method(net, "forward") is None and not _is_sequential(net):
        problems.append("class Net has no forward method")
    return problems


# ---- small AST helpers -------------------------------------------------------------------------

_UNKNOWN = object()


def _parse(source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise CodeError(_syntax(err)) from None


def _syntax(err: Exception) -> str:
    if isinstance(err, SyntaxError) and err.lineno is not None:
        return f"line {err.lineno}: {err.msg}"
    if isinstance(err, RecursionError | MemoryError):
        return "source is nested too deeply to read"
    return " ".join(str(getattr(err, "msg", None) or err).split())


def _unsafe_dunder(name: object) -> bool:
    return isinstance(name, str) and bool(_DUNDER.match(name)) and name not in SAFE_DUNDERS


def _torch_io(name: str) -> str:
    """The FORBIDDEN_TORCH entry `name` is or lies under, else ""."""
    return next((p for p in FORBIDDEN_TORCH if name == p or name.startswith(p + ".")), "")


def _imports(node: ast.AST) -> list[str]:
    """Modules an import statement names (`from a import b` names a and, maybe, a.b)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        subs = [f"{node.module}.{a.name}" for a in node.names]
        return [node.module] + [s for s in subs if _torch_io(s)]
    return []


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for a chain of attributes on a name; "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)):
        return f"{base}.{node.attr}"
    return ""


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    return next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _is_sequential(cls: ast.ClassDef) -> bool:
    return any(_dotted(b).split(".")[-1] == "Sequential" for b in cls.bases)


def _returns(fn: ast.FunctionDef) -> list[ast.AST]:
    return [n.value for s in fn.body for n in _preorder(s) if isinstance(n, ast.Return) and n.value]


def _preorder(node: ast.AST) -> Iterator[ast.AST]:
    """Nodes in source order (ast.walk goes breadth-first)."""
    yield node
    for child in ast.iter_child_nodes(node):
        yield from _preorder(child)


def _literal(node: ast.AST, consts: dict) -> object:
    """The value of a constant expression: literals, known names, + - * // on integers."""
    if isinstance(node, ast.Name):
        return consts.get(node.id, _UNKNOWN)
    if isinstance(node, ast.Tuple | ast.List):
        items = [_literal(e, consts) for e in node.elts]
        if any(i is _UNKNOWN for i in items):
            return _UNKNOWN
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
        a, b = _literal(node.left, consts), _literal(node.right, consts)
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b))
        if not ints or (b == 0 and isinstance(node.op, ast.FloorDiv)):
            return _UNKNOWN
        value = _ARITH[type(node.op)](a, b)
        return value if abs(value) < 2**63 else _UNKNOWN
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNKNOWN


_ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
          ast.FloorDiv: operator.floordiv}  # fmt: skip


def _bind_literal(stmt: ast.AST, consts: dict) -> None:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0]
        if isinstance(target, ast.Name) and (v := _literal(stmt.value, consts)) is not _UNKNOWN:
            consts[target.id] = v


def _node(call: ast.Call, pos: int, kw: str) -> ast.AST | None:
    node = next((k.value for k in call.keywords if k.arg == kw), None)
    if node is None and pos < len(call.args) and not isinstance(call.args[pos], ast.Starred):
        node = call.args[pos]
    return node


def _arg(call: ast.Call, pos: int, kw: str, default: object, consts: dict) -> object:
    """Argument `kw` (or positional `pos`) as a literal; "?" when not a known constant."""
    node = _node(call, pos, kw)
    if node is None:
        return default
    value = _literal(node, consts)
    if isinstance(value, tuple | list) and len(value) == 2 and value[0] == value[1]:
        value = value[0]  # square kernels, strides, paddings: (3, 3) reads as 3
    if isinstance(value, tuple | list):
        return tuple(value)
    return "?" if value is _UNKNOWN or isinstance(value, bytes) else value
