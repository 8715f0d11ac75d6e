"""Batched validity checking: shape propagation as a vectorized state machine in numpy.

The state of every sequence is (rank, channels-or-features, spatial side, residual stack). One
pass over the 15 positions updates it for the whole batch through per-token lookup tables, so
the cost is 15 steps of array arithmetic however many sequences there are. The rules mirror
what `build` + a forward pass enforce (tests compare the two on tens of thousands of
sequences); `explain` reuses the same pass on one sequence and words its first failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .vocab import DEFAULT_SPEC, FLAT_KINDS, MAP_KINDS, TOKENS, VOCAB, SpaceSpec

__all__ = ["InvalidArchitecture", "Shape", "as_tokens", "explain", "is_valid", "trace"]

# Failure codes, in the order they are checked at one position.
OK, NEEDS_SPATIAL, NEEDS_FLAT, TOO_SMALL, INDIVISIBLE = 0, 1, 2, 3, 4
NO_OPEN, SKIP_RANK, SKIP_SIZE, UNCLOSED, OUT_SPATIAL, OUT_WIDTH = 5, 6, 7, 8, 9, 10
LONE_VALUE = 11  # a group norm whose groups hold one value each (checked after INDIVISIBLE)

_CHUNK = 1 << 15  # rows per pass: big enough to amortise numpy calls, small enough for cache


class InvalidArchitecture(ValueError):
    """A sequence that does not describe a working network; the message is `explain(seq)`."""


@dataclass(frozen=True)
class Shape:
    """The tensor entering a position: (batch, c, s, s) when `spatial`, else (batch, c), s = 0."""

    spatial: bool
    c: int
    s: int

    def __str__(self) -> str:
        return f"(batch, {self.c}, {self.s}, {self.s})" if self.spatial else f"(batch, {self.c})"


@dataclass(frozen=True)
class _Tables:
    """Per-token facts as arrays indexed by token id (one fancy-index lookup per fact)."""

    rank: np.ndarray  # 1: needs (batch, C, H, W), 2: needs (batch, F), 0: either
    offset: np.ndarray  # side' = ((side + offset) >> shift) + 1, illegal when side + offset < 0
    shift: np.ndarray
    mask: np.ndarray  # divisor - 1: the width must have none of these bits set
    out: np.ndarray  # produced width, -1 keeps the input's
    to_flat: np.ndarray  # gap and flatten leave a flat tensor


_OPEN, _CLOSE, _FLATTEN, _HEAD = (
    [t.kind for t in TOKENS].index(k) for k in ("open", "close", "flatten", "head")
)
assert all(t.stride in (1, 2, 4) and t.divisor in (1, 4, 8) for t in TOKENS)  # powers of two
_GROUPS = [t.name for t in TOKENS].index("groupnorm")


@lru_cache(maxsize=16)
def _tables(classes: int, dtype: type) -> _Tables:
    def col(f, dt=dtype) -> np.ndarray:
        return np.array([f(t) for t in TOKENS], dtype=dt)

    return _Tables(
        rank=col(lambda t: 1 if t.kind in MAP_KINDS else 2 if t.kind in FLAT_KINDS else 0, np.int8),
        offset=col(lambda t: 2 * t.pad - t.kernel),
        shift=col(lambda t: t.stride.bit_length() - 1),
        mask=col(lambda t: t.divisor - 1),
        out=col(lambda t: classes if t.out == -2 else t.out),
        to_flat=col(lambda t: t.kind in ("flatten", "gap"), bool),
    )


def as_tokens(seqs: object) -> np.ndarray:
    """`seqs` as an integer array of token ids (last axis: tokens); one-line errors otherwise."""
    arr = np.asarray(seqs)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError(f"sequences need a last axis of tokens, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"sequences must be integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= len(VOCAB)):
        raise ValueError(f"token ids must lie in 0..{len(VOCAB) - 1}")
    return arr


def _columns(rows: np.ndarray) -> np.ndarray:
    """(m, length) tokens -> contiguous (length, m) intp: one cheap row per position."""
    return np.ascontiguousarray(rows.T, dtype=np.intp)


class _Scan:
    """Shapes of m sequences, advanced one position at a time (the whole batch per step).

    `detail` also records, per sequence, the first failure's code, position and (for a bad
    res_close) the position of its res_open, and the shape entering every position.
    """

    def __init__(self, m: int, length: int, spec: SpaceSpec, detail: bool) -> None:
        dt = np.int64 if spec.size**2 * max(spec.channels, 128) >= 2**31 else np.int32
        self.tb, self.spec, self.detail = _tables(spec.classes, dt), spec, detail
        self.spatial = np.ones(m, bool)
        self.c = np.full(m, spec.channels, dt)  # channels, or features once flat
        self.s = np.full(m, spec.size, dt)  # side of the square feature map
        self.depth = np.zeros(m, np.intp)
        self.stack = np.zeros((length, m), dt)  # per open residual: side at the open, 0 if flat
        self.opened_at = np.zeros((length, m), np.intp)
        self.failed = np.zeros(m, bool)
        self.live = np.ones(m, bool)  # False once past the head: later tokens act as no-ops
        self.code = np.zeros(m, np.int8)
        self.pos = np.full(m, -1, np.intp)
        self.aux = np.full(m, -1, np.intp)
        self.states: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.ok: np.ndarray | None = None  # set by finish()

    def step(self, j: int, t: np.ndarray) -> None:
        tb, spatial, c = self.tb, self.spatial, self.c
        t = t * self.live
        self.live &= t != _HEAD
        if self.detail:
            self.states.append((spatial.copy(), c.copy(), self.s.copy()))
        # rank bits: 1 = needs a feature map, 2 = needs flat; a map forbids 2, flat forbids 1
        wrong_rank = (tb.rank[t] & (spatial.view(np.int8) + 1)) != 0
        moved = self.s + tb.offset[t]
        too_small = spatial & (moved < 0)
        indivisible = (c & tb.mask[t]) != 0
        # PyTorch's group_norm refuses a group of one value (c / groups * side**2 at batch 1)
        lone = (t == _GROUPS) & (c * np.where(spatial, self.s * self.s, 1) <= tb.mask[t] + 1)
        bad = wrong_rank | too_small | indivisible | lone
        err = None
        if self.detail:
            conditions = [wrong_rank & spatial, wrong_rank, too_small, indivisible, lone]
            codes = [NEEDS_FLAT, NEEDS_SPATIAL, TOO_SMALL, INDIVISIBLE, LONE_VALUE]
            err = np.select(conditions, codes, OK)
        self.s = s = (moved >> tb.shift[t]) + 1
        o = tb.out[t]
        c = np.maximum(o, c * (o < 0))  # out = -1 keeps c (always >= 1)
        c *= 1 + ((t == _FLATTEN) & spatial) * (s * s - 1)
        self.c = c
        spatial &= ~tb.to_flat[t]
        self._open(j, np.flatnonzero(t == _OPEN))
        self._close(np.flatnonzero(t == _CLOSE), bad, err)
        self.failed |= bad
        if self.detail:
            self._first(err, j)

    def _open(self, j: int, rows: np.ndarray) -> None:
        if rows.size:
            d = self.depth[rows]
            self.stack[d, rows] = np.where(self.spatial[rows], self.s[rows], 0)
            self.opened_at[d, rows] = j
            self.depth[rows] = d + 1

    def _close(self, rows: np.ndarray, bad: np.ndarray, err: np.ndarray | None) -> None:
        if not rows.size:
            return
        d = self.depth[rows] - 1
        none = d < 0
        d = np.maximum(d, 0)
        skip = self.stack[d, rows]
        now = np.where(self.spatial[rows], self.s[rows], 0)
        rank = (skip == 0) != (now == 0)
        size = ~rank & (skip != now)
        bad[rows] |= none | rank | size
        self.depth[rows] = d
        if err is not None:
            sub = np.select([none, rank, size], [NO_OPEN, SKIP_RANK, SKIP_SIZE], OK)
            fresh = (err[rows] == OK) & (sub != OK) & (self.code[rows] == OK)
            err[rows[fresh]] = sub[fresh]
            self.aux[rows[fresh]] = np.where(none, -1, self.opened_at[d, rows])[fresh]

    def _first(self, err: np.ndarray, j: int | np.ndarray) -> None:
        first = (self.code == OK) & (err != OK)
        self.code[first] = err[first]
        self.pos[first] = j[first] if isinstance(j, np.ndarray) else j

    def finish(self) -> None:
        """Set `ok`; with `detail`, also record failures found only at the end."""
        unclosed = self.depth > 0
        wrong_out = self.spatial | (self.c != self.spec.classes)
        if self.detail:
            self.states.append((self.spatial, self.c, self.s))
            err = np.select([unclosed, self.spatial, wrong_out], [UNCLOSED, OUT_SPATIAL, OUT_WIDTH])
            self._first(err, np.where(unclosed, self.opened_at[0], len(self.stack)))
        self.ok = ~(self.failed | unclosed | wrong_out)


def _scan(cols: np.ndarray, spec: SpaceSpec, detail: bool = False) -> _Scan:
    """Run `_columns` output (length, m) through the state machine."""
    scan = _Scan(cols.shape[1], cols.shape[0], spec, detail)
    for j in range(cols.shape[0]):
        scan.step(j, cols[j])
    scan.finish()
    return scan


def is_valid(seqs: object, spec: SpaceSpec = DEFAULT_SPEC) -> np.ndarray:
    """Whether each sequence builds into a network mapping the spec's input to (batch, classes).

    `seqs` is an int array (..., length) of token ids, normally (n, LENGTH); the result has
    shape `seqs.shape[:-1]` (0-d for one sequence). Exactly equals "`build` succeeds and a
    forward pass on a dummy batch returns (batch, classes)", at millions of sequences per
    second on one core.
    """
    arr = as_tokens(seqs)
    flat = arr.reshape(-1, arr.shape[-1])
    result = np.empty(flat.shape[0], bool)
    for start in range(0, flat.shape[0], _CHUNK):
        cols = _columns(flat[start : start + _CHUNK])
        result[start : start + _CHUNK] = _scan(cols, spec).ok
    return result.reshape(arr.shape[:-1])


def _one(seq: object, spec: SpaceSpec):
    arr = as_tokens(seq)
    if arr.ndim != 1:
        raise ValueError(f"expected one sequence (a 1-d array), got shape {arr.shape}")
    scan = _scan(_columns(arr.reshape(1, -1)), spec, detail=True)
    shapes = [Shape(bool(sp[0]), int(c[0]), int(s[0]) if sp[0] else 0) for sp, c, s in scan.states]
    return arr, int(scan.code[0]), int(scan.pos[0]), int(scan.aux[0]), shapes


def trace(seq: object, spec: SpaceSpec = DEFAULT_SPEC) -> list[Shape]:
    """The tensor shape entering each position, then the output; InvalidArchitecture if invalid."""
    arr, code, pos, aux, shapes = _one(seq, spec)
    if code != OK:
        raise InvalidArchitecture(_message(arr, code, pos, aux, shapes, spec))
    return shapes


def explain(seq: object, spec: SpaceSpec = DEFAULT_SPEC) -> str | None:
    """None for a valid sequence, else one line: the first failing position, its token, the rule.

    Positions count from 0; failures found only at the end say "end".
    """
    arr, code, pos, aux, shapes = _one(seq, spec)
    return None if code == OK else _message(arr, code, pos, aux, shapes, spec)


def _message(
    arr: np.ndarray, code: int, pos: int, aux: int, shapes: list[Shape], spec: SpaceSpec
) -> str:
    length = len(arr)
    where = "end" if pos >= length else f"position {pos} ({VOCAB[arr[pos]]})"
    shape = shapes[min(pos, length)]
    tok = TOKENS[arr[pos]] if pos < length else None
    if code == NEEDS_SPATIAL:
        rule = f"needs a (batch, channels, height, width) input, got {shape}"
    elif code == NEEDS_FLAT:
        rule = f"needs a flat (batch, features) input, got {shape}; flatten or gap first"
    elif code == TOO_SMALL:
        rule = (
            f"{tok.kernel}x{tok.kernel} window (stride {tok.stride}, padding {tok.pad}) "
            f"does not fit the {shape.s}x{shape.s} input"
        )
    elif code == INDIVISIBLE:
        rule = f"needs a width divisible by {tok.divisor}, got {shape}"
    elif code == LONE_VALUE:
        rule = f"{tok.divisor} groups of {shape} hold one value each (PyTorch needs more than one)"
    elif code == NO_OPEN:
        rule = "no res_open to close"
    elif code in (SKIP_RANK, SKIP_SIZE):
        skip = shapes[aux]
        rule = (
            f"the skip from position {aux} is {skip} but the branch gives {shape}; "
            "a residual must keep the spatial size and cannot span flatten or gap"
        )
    elif code == UNCLOSED:
        rule = "never closed by a res_close"
    elif code == OUT_SPATIAL:
        rule = f"output is {shape}, expected (batch, {spec.classes}); end with gap/flatten, head"
    else:
        rule = f"output is {shape}, expected (batch, {spec.classes}); end with head"
    return f"{where}: {rule}"
