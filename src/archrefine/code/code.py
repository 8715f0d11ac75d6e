"""Model-written PyTorch code, read without running it: extract, filter, fingerprint.

`extract_code` pulls the code out of an LLM response; `static_check` rejects obvious junk before
it costs a sandbox run; `fingerprint` (in `archrefine.code.fingerprint`) describes the
network's structure from the AST alone, so duplicates can be found in this process (the code
itself only ever runs in `archrefine.sandbox.sandbox`); `to_tokens` (in
`archrefine.code.tokens`) maps that structure into the grounded vocabulary so code candidates
and simulated ones share one novelty/diversity yardstick. This module holds the small AST
helpers the fingerprint reader shares with `static_check` are in `ast_helpers.py`.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterable, Iterator

from archrefine.code.ast_helpers import (
    CodeError,
    dotted_name,
    find_method,
    is_sequential,
    parse_source,
    syntax_message,
)

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
# The info string after ``` is taken whole, its tag read from it afterwards (`_TAG`): splitting
# it inside one pattern (`[ \t]*([\w+.-]*)[^\n]*\n`) backtracked quadratically on a fence
# followed by spaces and no newline (a 1 MB reply cost the loop's process ~20 minutes).
# Before a fence, invisible format characters (Unicode Cf: a byte-order mark, zero-width spaces,
# direction marks) count as indentation: a reply that began with a BOM had its closing fence read
# as an empty opening one, and lost its code.
_INDENT = r"[ \t\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]*"
_FENCE = re.compile(rf"^{_INDENT}```([^\n]*)\n(.*?)^{_INDENT}```", re.M | re.S)
_OPEN_FENCE = re.compile(rf"^{_INDENT}```([^\n]*)\n", re.M)
_TAG = re.compile(r"[ \t]*([\w+.-]*)")


def extract_code(response: str, *, max_unfenced: int | None = None) -> str:
    """The code in an LLM `response`: the first ```python block, else the first ``` block,
    else the whole text if it parses as Python. A block cut off by the token limit (no closing
    fence) counts as running to the end. Raises CodeError when there is none.

    `max_unfenced`: the longest text without a fence that is parsed at all (`ast.parse` costs
    ~0.75 GB and 2 s per MB of valid Python: a 30 MB reply would take the caller's process down).
    """
    if isinstance(response, str):
        response = response.removeprefix("\ufeff")  # a byte-order mark is no part of the text
    if not isinstance(response, str) or not response.strip():
        raise CodeError("empty response")
    blocks = [(_tag(info), body) for info, body in _FENCE.findall(response)]
    if not blocks and (opened := _OPEN_FENCE.search(response)):
        blocks = [(_tag(opened.group(1)), response[opened.end() :])]
    if blocks:
        tag, body = next((b for b in blocks if b[0] in PYTHON_TAGS), blocks[0])
        code = textwrap.dedent(body).strip("\n")
        if not code.strip():
            raise CodeError(f"the ```{tag} block is empty")
        return code + "\n"
    if max_unfenced is not None and len(response) > max_unfenced:
        raise CodeError(
            f"no ``` code block, and the text ({len(response):,} characters) is too long to "
            f"read as Python (limit {max_unfenced:,})"
        )
    try:
        ast.parse(response)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise CodeError(
            f"no ``` code block, and the text is not Python ({syntax_message(err)})"
        ) from None
    return response


def _tag(info: str) -> str:
    """The language tag of a fence's info string (`python` in ```` ```python title ````)."""
    return _TAG.match(info).group(1).lower()  # type: ignore[union-attr] - matches "" at least


def static_check(
    source: str,
    *,
    allowed_imports: Iterable[str] = ("torch", "math", "collections", "functools", "typing"),
) -> list[str]:
    """Problems that make `source` not worth a sandbox run; empty when there are none.

    It must parse, define a top-level `class Net` with a `forward` method (inherited from
    `nn.Sequential` counts), import only `allowed_imports` (by top-level module), and avoid
    exec/eval/compile/__import__/open, os/sys/subprocess/socket and dunder attribute tricks,
    and leave `Net` and its methods what their statements say (`_rebinds`). This is a filter
    for obvious junk, NOT a security boundary: hostile code can evade any static check, which
    is why every candidate still runs only inside the sandbox.
    """
    try:
        tree = parse_source(source)
    except CodeError as err:
        return [str(err)]
    allowed = {name.split(".")[0] for name in allowed_imports}
    nets = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Net"]
    try:
        found = _found(tree, allowed) + _rebinds(tree, nets)
    except RecursionError:  # a chain of ~1,000 attributes parses, but is too deep to name
        return [syntax_message(RecursionError())]
    problems = [f"line {n}: {msg}" for n, msg in sorted(set(found))]
    net = nets[0] if nets else None
    if net is None:
        problems.append("no top-level class Net")
    elif find_method(net, "forward") is None and not is_sequential(net):
        problems.append("class Net has no forward method")
    return problems


def _found(tree: ast.Module, allowed: set[str]) -> list[tuple[int, str]]:
    """(line, problem) for every forbidden import, name, attribute or string in `tree`."""
    found: list[tuple[int, str]] = []
    inner: set[int] = set()  # attributes inside a chain already named whole (`torch.hub.load`)
    for node in ast.walk(tree):  # outer nodes first: naming each link was quadratic, 20 s
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
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            inner.add(id(node.value))
            if prefix := _torch_io(dotted_name(node)):
                found.append((line, f"use of {prefix!r} is not allowed"))
        elif isinstance(node, ast.Attribute):
            inner.add(id(node.value))
        if isinstance(node, ast.Constant) and _unsafe_dunder(node.value):
            found.append((line, f"string {node.value!r} is not allowed"))
    return found


def _rebinds(tree: ast.Module, nets: list[ast.ClassDef]) -> list[tuple[int, str]]:
    """(line, problem) for each way a class or method could be other than the statement the
    fingerprint reads: a second `class Net`, a binding of `Net` (`Net = Other`, `for Net in`,
    an import, `global`), a patched attribute (`Net.forward = f`, `nn.GELU = nn.ReLU`), a
    class or method replaced by a decorator or metaclass, a method defined twice or rebound in
    its class body (`forward = Other.forward`). The sandbox runs what the names hold last, so a
    copy of a known network rebound to `Net` after a decoy `class Net` scored as the decoy."""
    found = [(n.lineno, "a second class Net") for n in nets[1:]]
    found += [(n.lineno, "a class Net inside a block") for n in _blocks(tree.body)
              if isinstance(n, ast.ClassDef) and n.name == "Net"]  # fmt: skip
    imported, shadowed = {"Net"}, set()  # shadowed: bound here, so `@staticmethod` may be any
    classes, stores, calls = [], [], []  # checked once every import is known (one walk)
    for node in ast.walk(tree):
        if isinstance(node, ast.alias):
            imported.add(node.asname or node.name.split(".")[0])
            shadowed |= {node.asname} if node.asname and node.asname != node.name else set()
            if (node.asname or node.name) == "Net":
                found.append((getattr(node, "lineno", 0), "an import named Net"))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            shadowed.add(node.name)
            if isinstance(node, ast.ClassDef):
                classes.append(node)
            elif node.name == "Net":
                found.append((node.lineno, "a function named Net"))
        elif isinstance(node, ast.Name | ast.Attribute) and not isinstance(node.ctx, ast.Load):
            stores.append(node)
            shadowed |= {node.id} if isinstance(node, ast.Name) else set()
        elif isinstance(node, ast.Global | ast.Nonlocal) and "Net" in node.names:
            found.append((node.lineno, "global Net"))
        elif isinstance(node, ast.ExceptHandler) and node.name == "Net":
            found.append((node.lineno, "assignment to Net"))
        elif isinstance(node, ast.Call) and dotted_name(node.func) in _REBINDERS | _SETTERS:
            calls.append(node)
    for node in stores:
        if isinstance(node, ast.Name) and node.id == "Net":
            found.append((node.lineno, "assignment to Net"))
        elif isinstance(node, ast.Name) and node.id in imported and isinstance(node.ctx, ast.Store):
            found.append((node.lineno, f"assignment to the imported name {node.id!r}"))
        elif isinstance(node, ast.Attribute) and (root := _root(node)) in imported:
            if dotted_name(node).startswith("torch.backends."):  # cudnn.benchmark: no op changes
                continue
            found.append((node.lineno, f"assignment to an attribute of {root}"))
    for call in calls:
        name = dotted_name(call.func)
        root = _root(call.args[0]) if call.args else ""
        if name in _REBINDERS or root in imported:
            found.append((call.lineno, f"{name}() on {root}" if root else f"{name}()"))
    found = [(n, f"{what} is not allowed") for n, what in found]
    return found + [f for cls in classes for f in _class_rebinds(cls, shadowed)]


def _root(node: ast.AST) -> str:
    """The name a chain of attributes starts from (`nn` in `nn.GELU`), else ""."""
    return dotted_name(node).split(".")[0]


def _blocks(body: list[ast.stmt], nested: bool = False) -> Iterator[ast.stmt]:
    """The statements inside `body`'s `if`, `for`, `with`, `try`, `match` blocks (`nested`:
    and `body` itself): they bind names where `body` does, unlike a function's or class's."""
    for stmt in body:
        if nested:
            yield stmt
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            for inner in getattr(stmt, field, []):  # a handler or a case holds a body
                yield from _blocks([inner] if isinstance(inner, ast.stmt) else inner.body, True)


def _class_rebinds(cls: ast.ClassDef, shadowed: set[str]) -> list[tuple[int, str]]:
    """A class's own ways of being other than it reads (see `_rebinds`)."""
    found = []
    if cls.decorator_list or cls.keywords:
        found.append((cls.lineno, f"class {cls.name} with a decorator or metaclass is not allowed"))
    methods = [n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    names = {"forward", "__init__"} | {m.name for m in methods}
    seen: set[str] = set()
    for m in methods:
        if m.name in seen:
            found.append((m.lineno, f"method {m.name!r} defined twice is not allowed"))
        seen.add(m.name)
        for d in m.decorator_list:  # `@torch.no_grad()` is its call's name
            name = dotted_name(d.func if isinstance(d, ast.Call) else d)
            swaps = name == "property" and m.name in ("forward", "__init__")  # any callable
            if name not in _DECORATORS or name.split(".")[0] in shadowed or swaps:
                found.append((d.lineno, f"a decorator on method {m.name!r} is not allowed"))
    for stmt in cls.body:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and node.id in names and isinstance(node.ctx, ast.Store):
                found.append((node.lineno, f"rebinding method {node.id!r} is not allowed"))
    return found


_DECORATORS = frozenset({"staticmethod", "classmethod", "property", "torch.no_grad",
                         "torch.inference_mode", "torch.enable_grad", "torch.jit.ignore",
                         "torch.jit.export", "torch.jit.unused"})  # fmt: skip
_REBINDERS = frozenset({"globals", "locals", "vars"})  # they reach the module's names by string
_SETTERS = frozenset({"setattr", "delattr"})


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
