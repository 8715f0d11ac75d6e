"""The NAS-Bench-Graph space: GNN cells whose accuracy was measured, looked up, never trained.

NAS-Bench-Graph (Qin et al., NeurIPS 2022 Datasets and Benchmarks) trained every one of 26,206
graph-neural-network cells on nine datasets. A cell is a DAG of 4 computing nodes; node k
(1..4) reads one earlier node (0 is the raw input) and applies one of 9 operations. Here a
cell is the 8 tokens `in_1 op_1 in_2 op_2 in_3 op_3 in_4 op_4`, with input tokens `from0 ..
from3` (ids 0..3) and operation tokens (ids 4..12), so every id means one thing wherever it
appears. Many sequences describe the same cell (node order, sibling order, where skips sit):
the benchmark's own reduction (`Arch.valid_hash` from the `nas-bench-graph` package) maps each
well-formed sequence to its stored cell, once, into a table of 24 * 9**4 entries; after that
`is_valid` and `fitness` are integer arithmetic and one table lookup per sequence. See
docs/nasbench.md.
"""

from __future__ import annotations

import pickle
import re
from functools import cache
from importlib import resources
from typing import Literal

import numpy as np

from archrefine.core.config import NASBENCH_DATASETS

__all__ = ["DATASETS", "INPUTS", "LENGTH", "NODES", "OPS", "TOKENS", "NasBenchGraph"]

DATASETS = NASBENCH_DATASETS
"""Dataset names the wheel ships measurements for (files `light/<name>.bench`)."""

NODES = 4
OPS = ("gat", "gcn", "gin", "cheb", "sage", "arma", "graph", "fc", "skip")
"""The benchmark's operations, in its own order (`nas_bench_graph.gnn_list`); proteins has
measurements only for gcn, sage, arma, fc and skip."""
INPUTS = tuple(f"from{k}" for k in range(NODES))
"""`from0` is the raw input, `fromk` the output of computing node k."""
TOKENS = INPUTS + OPS
LENGTH = 2 * NODES

_LINK_CODES = 2 * 3 * 4  # node 1 reads node 0; nodes 2, 3, 4 read one of 2, 3, 4 earlier nodes
_OP_CODES = len(OPS) ** NODES
# The benchmark's key: index of the (reduced) link pattern, then the ops in base 10.
_LINK_LIST = (
    (0, 0, 0, 0),
    (0, 0, 0, 1),
    (0, 0, 1, 1),
    (0, 0, 1, 2),
    (0, 0, 1, 3),
    (0, 1, 1, 1),
    (0, 1, 1, 2),
    (0, 1, 2, 2),
    (0, 1, 2, 3),
)


class _BenchUnpickler(pickle.Unpickler):
    """The .bench files are pickles of {key: {metric: float}}; refuse anything but numpy
    scalars, so reading a data file can never run code."""

    _ALLOWED = {
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"benchmark file refers to {module}.{name}")
        return super().find_class(module, name)


def _package():
    try:
        import nas_bench_graph.architecture as arch
    except ImportError:
        raise ImportError(
            "the nasbench-graph space needs the nas-bench-graph package: "
            "pip install 'nas-bench-graph>=1.4'"
        ) from None
    return arch


@cache
def _hash_table() -> np.ndarray:
    """The benchmark key of every well-formed sequence, by `_code`; -1 where there is none
    (all four nodes `skip`). Computed once per process with the package's own reduction."""
    arch = _package()
    table = np.full(_LINK_CODES * _OP_CODES, -1, dtype=np.int64)
    links = [(0, a, b, c) for a in range(2) for b in range(3) for c in range(4)]
    ops = np.indices((len(OPS),) * NODES).reshape(NODES, -1).T
    for li, link in enumerate(links):
        for oi, row in enumerate(ops):
            names = [OPS[o] for o in row]
            if set(names) != {"skip"}:
                table[li * _OP_CODES + oi] = arch.Arch(list(link), names).valid_hash()
    return table


@cache
def _load(dataset: str) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(sorted keys, metric columns aligned with them, row of each `_code` or -1)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset: {dataset!r} is not one of {', '.join(DATASETS)}")
    _package()
    path = resources.files("nas_bench_graph") / "light" / f"{dataset}.bench"
    with path.open("rb") as f:
        bench: dict[int, dict[str, float]] = _BenchUnpickler(f).load()
    keys = np.array(sorted(bench), dtype=np.int64)
    columns = {
        name: np.array([float(bench[k][field]) for k in keys.tolist()])
        for name, field in (
            ("valid", "valid_perf"),
            ("test", "perf"),
            ("latency", "latency"),
            ("params", "para"),
        )
    }
    hashes = _hash_table()
    pos = np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)
    rows = np.where((hashes >= 0) & (keys[pos] == hashes), pos, -1).astype(np.int32)
    return keys, columns, rows


def _key_to_seq(keys: np.ndarray) -> np.ndarray:
    """Benchmark keys -> the sequences of the stored cells, (n, LENGTH)."""
    digits = (keys[:, None] // 10 ** np.arange(NODES - 1, -1, -1)) % 10
    link = np.array(_LINK_LIST)[keys // 10**NODES]
    out = np.empty((len(keys), LENGTH), dtype=np.int64)
    out[:, 0::2] = link
    out[:, 1::2] = digits + len(INPUTS)
    return out


def _codes(seqs: object) -> np.ndarray:
    """Index of each sequence into `_hash_table`, -1 when it is not a well-formed cell."""
    arr = np.asarray(seqs)
    if arr.ndim == 0 or arr.shape[-1] != LENGTH or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"expected integer sequences of shape (..., {LENGTH}), got {arr.shape}")
    arr = arr.astype(np.int64)
    link, ops = arr[..., 0::2], arr[..., 1::2] - len(INPUTS)
    links_ok = ((link >= 0) & (link <= np.arange(NODES))).all(-1)  # node k reads a node < k
    ok = links_ok & ((ops >= 0) & (ops < len(OPS))).all(-1)
    link_code = (link[..., 1] * 3 + link[..., 2]) * 4 + link[..., 3]
    op_code = (np.where(ok[..., None], ops, 0) * len(OPS) ** np.arange(NODES - 1, -1, -1)).sum(-1)
    return np.where(ok, link_code * _OP_CODES + op_code, -1)


def encode(link: object, ops: object) -> np.ndarray:
    """The sequence of `Arch(link, ops)` in the package's terms: computing node k + 1 reads
    node `link[k]` (0: the raw input) and applies `ops[k]` (a name from OPS)."""
    link, ops = list(link), list(ops)
    if len(link) != NODES or len(ops) != NODES:
        raise ValueError(f"a cell has {NODES} nodes, got {len(link)} links and {len(ops)} ops")
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise ValueError(f"ops: {unknown[0]!r} is not one of {', '.join(OPS)}")
    seq = np.empty(LENGTH, dtype=np.int64)
    seq[0::2] = link
    seq[1::2] = [len(INPUTS) + OPS.index(o) for o in ops]
    return seq


def decode(seq: object) -> str:
    """One line: `n1=gcn(in) n2=gat(n1) n3=sage(n1) n4=fc(n2) -> n3+n4` (node = op(input),
    then the leaves, which the benchmark wires to the output). `parse` reads it back.
    Sequences that are not well-formed cells show their token names after `not a cell:`."""
    arr = np.asarray(seq)
    if arr.shape != (LENGTH,) or _codes(arr) < 0:
        names = [TOKENS[t] if 0 <= t < len(TOKENS) else f"?{t}" for t in arr.ravel().tolist()]
        return "not a cell: " + " ".join(names)
    link, ops = arr[0::2].tolist(), arr[1::2].tolist()
    nodes = [
        f"n{k + 1}={TOKENS[op]}({'in' if src == 0 else f'n{src}'})"
        for k, (src, op) in enumerate(zip(link, ops, strict=True))
    ]
    leaves = [f"n{k}" for k in range(1, NODES + 1) if k not in link]
    return " ".join(nodes) + " -> " + "+".join(leaves)


_NODE = re.compile(r"n(\d)=(\w+)\((in|n\d)\)")


def parse(text: str) -> np.ndarray:
    """The sequence `decode` wrote `text` for."""
    found = _NODE.findall(text)
    if [int(k) for k, _, _ in found] != list(range(1, NODES + 1)):
        raise ValueError(f"not a decoded cell: {text!r}")
    return encode(
        [0 if src == "in" else int(src[1:]) for _, _, src in found], [o for _, o, _ in found]
    )


class NasBenchGraph:
    """One dataset of NAS-Bench-Graph as a token space: validity is "the benchmark measured
    this cell", fitness is the measured accuracy.

    Parameters
    ----------
    dataset : one of `DATASETS`.
    metric : "valid" (default) scores a cell by its validation accuracy, which a search may
        legitimately use; "test" by its test accuracy, for reporting only (selecting on test
        numbers leaks the test set into the search).

    Example
    -------
    >>> space = NasBenchGraph("cora")
    >>> seqs = space.known(3, np.random.default_rng(0))
    >>> space.fitness(seqs)  # doctest: +SKIP
    """

    length: int = LENGTH
    vocab: int = len(TOKENS)
    tokens: tuple[str, ...] = TOKENS

    def __init__(
        self, dataset: str = "cora", *, metric: Literal["valid", "test"] = "valid"
    ) -> None:
        if metric not in ("valid", "test"):
            raise ValueError(f"metric: {metric!r} is not one of valid, test")
        self.dataset = dataset
        self.metric = metric
        self._keys, self._columns, self._rows = _load(dataset)

    def __repr__(self) -> str:
        return f"NasBenchGraph({self.dataset!r}, metric={self.metric!r})"

    @property
    def n_archs(self) -> int:
        """Cells the benchmark measured on this dataset (26,206; 2,021 for proteins)."""
        return len(self._keys)

    def rows(self, seqs: object) -> np.ndarray:
        """Row of each sequence's cell in the benchmark (`seqs.shape[:-1]`), -1 if none."""
        codes = _codes(seqs)
        return np.where(codes >= 0, self._rows[np.maximum(codes, 0)], -1)

    def is_valid(self, seqs: object) -> np.ndarray:
        """Whether each sequence (any leading batch dims) is a cell the benchmark measured."""
        return self.rows(seqs) >= 0

    def fitness(self, seqs: object, metric: str | None = None) -> np.ndarray:
        """The measured `metric` ("valid", "test", "latency" or "params"; default the
        instance's) of each sequence's cell; NaN for invalid sequences."""
        metric = self.metric if metric is None else metric
        if metric not in self._columns:
            raise ValueError(f"metric: {metric!r} is not one of {', '.join(self._columns)}")
        column = self._columns[metric]
        rows = self.rows(seqs)
        return np.where(rows >= 0, column[np.maximum(rows, 0)], np.nan)

    def canonical(self, seqs: object) -> np.ndarray:
        """The stored form of each sequence's cell (so isomorphic sequences compare equal);
        rows of -1 for invalid sequences."""
        rows = self.rows(seqs)
        out = _key_to_seq(self._keys[np.maximum(rows, 0)].ravel()).reshape(*rows.shape, LENGTH)
        return np.where(rows[..., None] >= 0, out, -1)

    def archs(self) -> np.ndarray:
        """Every measured cell in its stored form, (n_archs, LENGTH), in benchmark-key order."""
        return _key_to_seq(self._keys)

    def known(self, n: int, rng: np.random.Generator | int | None = None) -> np.ndarray:
        """`n` hand-designed cells, (n, LENGTH): the package's anchors (2- and 3-layer GCN, GAT,
        GIN, k-GNN, GraphSAGE as chains whose first nodes are skips), those measured on this
        dataset, in an order drawn from `rng`, repeating when `n` exceeds their number."""
        anchors = np.array([encode(a.link, a.ops) for a in _package().anchors])
        anchors = anchors[self.is_valid(anchors)]
        rng = np.random.default_rng(rng)
        reps = max(-(-n // len(anchors)), 1)
        return anchors[np.concatenate([rng.permutation(len(anchors)) for _ in range(reps)])[:n]]

    encode = staticmethod(encode)
    decode = staticmethod(decode)
    parse = staticmethod(parse)
