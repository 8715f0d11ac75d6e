"""Exact kNN novelty: mean normalized Hamming distance to the k nearest archive rows.

Queries `(T, n, d)` and an archive `(T, A, d)` of small non-negative integer tokens, valid in its
first `filled[t]` rows for trial t; k shrinks to `filled[t]` where the archive is smaller, and a
trial with an empty archive gets NaN. Distances are integers, so every method returns exactly
the same numbers (ties cannot change a sum of the k smallest distances).

Methods (`benchmarks/scale.py` measures them; `benchmarks/RESULTS.md`, section `scale`):

* `numpy`: the straightforward broadcast, one position at a time into a small-int block; the
  baseline.
* `gemm`: one-hot codes, matches = one-hot queries @ one-hot archiveᵀ (float32, exact),
  distance = d − matches.
* `bitpack`: one-hot bits packed into uint64 words, popcount of XOR (halved).
* `faiss`: `faiss.IndexBinaryFlat` on the same one-hot codes padded to 64, 128, 256, 512 bits or
  a multiple of 64; one-hot Hamming is twice the token Hamming.
* `faiss-bytes`: faiss's generalized Hamming (number of differing bytes) on tokens stored one per
  byte, padded to a multiple of 8 bytes, with a running heap over archive blocks. Tokens < 256.
* `numba` (the `fast` extra): every trial in one compiled call; tokens one per byte in uint64
  words, differing bytes counted with a SWAR trick, and the k smallest summed from a histogram
  of the d + 1 possible distances (`archrefine.core.fast`). Tokens < 256.

The first three run archive blocks of at most `BLOCK` (T · queries · rows) distances and keep a
running k smallest with `np.partition`, so memory does not grow with the archive. Both faiss
methods loop over trials and keep only k distances per query.

`auto` (`choose`): `numba` where numba is loaded already, or installed and the call has at least
`NUMBA_PAIRS` query × row pairs (its start-up, ~0.5 s of CPU, pays off from there; it replaces
one faiss call per trial with one call per cycle; docs/performance.md), unless a trial has
`PARALLEL` pairs or more and faiss is installed (faiss then runs on every core). Otherwise, from
`benchmarks/scale.py` on a shared 2-core Xeon (d = 15, V = 30, k = 15): `faiss-bytes` where
faiss imports, tokens fit a byte and a trial has at least `FAISS_PAIRS` query × row pairs, else
`numpy`. Over three runs `faiss-bytes` ran 1.5–2.6× `numpy` at paper
scale (100 trials × 50 candidates × 270 rows), 4.7–8.6× at 500 × 2,700, 5.8–10.3× at 5,000 ×
27,000 and 6–10× at 5,000 × 10^6 (700–950 candidates/s); below ~5,000 pairs per trial (cycle 1
of the paper loop: 50 × 50) its per-trial calls cost more and `numpy` is 10–25% faster. `faiss`
reached 0.5–1.8× `numpy`; `gemm` (0.01–0.6×: float32 BLAS at ~40 GFLOPS, 900 flops a pair) and
`bitpack` (0.3–0.5×) lost to `numpy` at every size, so without faiss `auto` is `numpy`.
"""

from __future__ import annotations

import functools

import numpy as np

from archrefine.core import fast

METHODS = ("numpy", "gemm", "bitpack", "faiss", "faiss-bytes", "numba")
BLOCK = {"numpy": 1 << 20, "gemm": 1 << 22, "bitpack": 1 << 20}  # distances per block
ROWS = 4096  # archive rows per block (fewer when there are many trials)
FAISS_PAIRS = 5000  # query × row pairs per trial from which `auto` picks `faiss-bytes`
FAISS_ROWS = 1 << 16  # archive rows per faiss call (keeps the block in cache)
NUMBA_PAIRS = 5_000_000  # query × row pairs in one call from which `auto` loads numba
NUMBA_ROWS = 4096  # archive rows per numba block: 32 KB per 8 tokens of length, stays in L2
PARALLEL = 1 << 27  # query × row pairs per trial below which faiss runs on one thread


def novelty(
    seqs: np.ndarray, archive: np.ndarray, filled: np.ndarray, k: int, method: str = "auto"
) -> np.ndarray:
    """`(T, n)` mean normalized Hamming distance from each query to its k nearest archive rows."""
    trials, n, d = seqs.shape
    filled = np.asarray(filled)
    width = int(filled.max()) if filled.size else 0
    if width == 0:
        return np.full((trials, n), np.nan)
    total = knn_sums(seqs, archive[:, :width], filled, k, method)
    kk = np.minimum(k, filled)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / (kk[:, None] * d)


def knn_sums(
    seqs: np.ndarray, archive: np.ndarray, filled: np.ndarray, k: int, method: str = "auto"
) -> np.ndarray:
    """`(T, n)` int64 sums of the `min(k, filled[t])` smallest Hamming distances."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    filled = np.asarray(filled)
    width = int(filled.max()) if filled.size else 0
    archive = archive[:, :width]
    if method not in (*METHODS, "auto"):
        raise ValueError(f"unknown kNN method {method!r}; choose from {', '.join(METHODS)}, auto")
    if width == 0:
        return np.zeros(seqs.shape[:2], np.int64)
    if method == "auto":
        method = choose(seqs, archive)
    if method == "faiss":
        return _faiss_sums(seqs, archive, filled, k, bytes_=False)
    if method == "faiss-bytes":
        return _faiss_sums(seqs, archive, filled, k, bytes_=True)
    if method == "numba":
        return _numba_sums(seqs, archive, filled, k)
    return _blocked(method, seqs, archive, filled, k)


def choose(seqs: np.ndarray, archive: np.ndarray) -> str:
    """The `auto` pick (module docstring): measured, not modelled."""
    trials, n = seqs.shape[:2]
    big = trials * n * archive.shape[1] >= NUMBA_PAIRS
    threads = n * archive.shape[1] >= PARALLEL and has_faiss()  # faiss's OpenMP wins there
    wanted = (fast.loaded() or (big and fast.available())) and not threads
    if wanted and _vocab(seqs, archive) <= 256:
        return "numba" if fast.kernels() is not None else "numpy"
    pairs = seqs.shape[1] * archive.shape[1]  # per trial
    if pairs >= FAISS_PAIRS and has_faiss() and _vocab(seqs, archive) <= 256:
        return "faiss-bytes"
    return "numpy"


def preload(trials: int, queries: int, rows: int, vocab: int) -> None:
    """Load numba's kernels now (`fast.kernels`) when `auto` will pick them for `trials` ×
    `queries` against up to `rows` archive rows of tokens < `vocab`: the simulator calls this
    before its first cycle, so every cycle runs the compiled proposal, sampling and kNN. Loading
    them in a background thread beside the first cycles instead cost more than it hid: those
    cycles ran numpy's slower twins (4× the time at 1000 trials) while the load's Python held
    the GIL, and `archrefine run` took 1.54 s against 1.29 s loading first (medians of 5 on 2
    cores, docs/performance.md)."""
    if fast.loaded() or vocab > 256 or trials * queries * rows < NUMBA_PAIRS:
        return
    if queries * rows >= PARALLEL and has_faiss():  # `choose` keeps such calls on faiss
        return
    fast.kernels()


@functools.cache
def has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss():
    try:
        import faiss
    except ImportError:
        need = "pip install 'archrefine[scale]'"
        raise ImportError(f"kNN methods 'faiss' and 'faiss-bytes' need faiss-cpu: {need}") from None
    return faiss


def _vocab(seqs: np.ndarray, archive: np.ndarray) -> int:
    return max(int(seqs.max(initial=0)), int(archive.max(initial=0))) + 1


# --- numpy-side methods: blocks of distances, running k smallest ------------------------------


def _blocked(method: str, seqs, archive, filled, k) -> np.ndarray:
    trials, n, d = seqs.shape
    width = archive.shape[1]
    kmax = min(k, width)
    big = d + 1  # larger than any distance: marks rows past a trial's fill
    dtype = np.uint8 if big < 256 else np.int32
    vocab = _vocab(seqs, archive)
    rows = min(width, max(1, min(ROWS, BLOCK[method] // trials)))
    per = max(1, min(n, BLOCK[method] // (trials * rows)))
    encode, distance = _KERNELS[method]
    queries = encode(seqs, vocab)
    best = np.full((trials, n, kmax), big, dtype)
    for s in range(0, width, rows):
        e = min(width, s + rows)
        block = encode(archive[:, s:e], vocab)
        past = np.arange(s, e)[None, :] >= filled[:, None]  # (T, rows)
        for q in range(0, n, per):
            dist = distance(queries, q, min(n, q + per), block, d, dtype)
            if past.any():
                dist[np.broadcast_to(past[:, None, :], dist.shape)] = big
            both = np.concatenate([best[:, q : q + per], dist], axis=2)
            best[:, q : q + per] = np.partition(both, kmax - 1, axis=2)[:, :, :kmax]
    return np.where(best == big, 0, best).sum(axis=2, dtype=np.int64)


def _positions(x: np.ndarray, vocab: int) -> np.ndarray:
    """Position-major copy `(d, T, m)` in the smallest integer type."""
    kind = np.uint8 if vocab <= 256 else np.int32
    return np.ascontiguousarray(np.moveaxis(x, 2, 0), dtype=kind)


def _numpy_distance(queries, q0, q1, block, d, dtype):
    out = np.zeros((block.shape[1], q1 - q0, block.shape[2]), dtype)
    differ = np.empty(out.shape, bool)
    for i in range(d):
        np.not_equal(queries[i][:, q0:q1, None], block[i][:, None, :], out=differ)
        if dtype == np.uint8:
            np.add(out, differ.view(np.uint8), out=out)
        else:
            out += differ
    return out


def _onehot(x: np.ndarray, vocab: int) -> np.ndarray:
    """Float32 one-hot codes `(T, m, d·V)`."""
    trials, m, d = x.shape
    out = np.zeros((trials * m, d * vocab), np.float32)
    cols = np.arange(d) * vocab + x.reshape(-1, d)
    out[np.arange(trials * m)[:, None], cols] = 1.0
    return out.reshape(trials, m, d * vocab)


def _gemm_distance(queries, q0, q1, block, d, dtype):
    matches = np.matmul(queries[:, q0:q1], block.transpose(0, 2, 1))
    return np.subtract(d, matches, out=matches).astype(dtype)


def onehot_bits(x: np.ndarray, vocab: int, nbytes: int) -> np.ndarray:
    """One-hot codes `(..., nbytes)` uint8: bit i·V + x_i set for each position i."""
    *lead, d = x.shape
    flat = x.reshape(-1, d).astype(np.int64)
    out = np.zeros((flat.shape[0], nbytes), np.uint8)
    bits = np.arange(d) * vocab + flat
    byte, mask = bits >> 3, (1 << (bits & 7)).astype(np.uint8)
    base = np.arange(flat.shape[0]) * nbytes
    raveled = out.reshape(-1)
    for i in range(d):  # one bit per row and position: no two updates hit the same byte
        raveled[base + byte[:, i]] |= mask[:, i]
    return out.reshape(*lead, nbytes)


def _packed(x: np.ndarray, vocab: int) -> np.ndarray:
    words = -(-x.shape[2] * vocab // 64)
    return onehot_bits(x, vocab, 8 * words).view(np.uint64)


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return _POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _bitpack_distance(queries, q0, q1, block, d, dtype):
    acc = np.zeros((block.shape[0], q1 - q0, block.shape[1]), np.uint8 if 2 * d < 256 else np.int32)
    for w in range(block.shape[2]):
        acc += _popcount(queries[:, q0:q1, w, None] ^ block[:, None, :, w])
    return (acc >> 1).astype(dtype, copy=False)


_KERNELS = {
    "numpy": (_positions, _numpy_distance),
    "gemm": (_onehot, _gemm_distance),
    "bitpack": (_packed, _bitpack_distance),
}


# --- numba: every trial in one call, a histogram of distances per query ----------------------


def _numba_sums(seqs, archive, filled, k) -> np.ndarray:
    compiled = fast.kernels()
    if compiled is None:
        raise ImportError("kNN method 'numba' needs numba: pip install 'archrefine[fast]'")
    d = seqs.shape[2]
    if _vocab(seqs, archive) > 256:
        raise ValueError(f"kNN method 'numba' needs tokens < 256, got {_vocab(seqs, archive) - 1}")
    words = -(-d // 8)
    queries = fast.pack_bytes(seqs, words)
    packed = fast.pack_bytes(archive[:, : int(filled.max())], words)
    rows = np.ascontiguousarray(packed.swapaxes(1, 2))  # word-major: the row loop vectorizes
    return compiled.knn_sums(queries, rows, filled.astype(np.int64), k, d, NUMBA_ROWS)


# --- faiss: per trial, k distances per query ---------------------------------------------------


def faiss_code_bytes(bits: int) -> int:
    """Bytes of a padded one-hot code: faiss has fast paths for 8, 16, 32 and 64 bytes."""
    need = -(-bits // 8)
    return next((b for b in (8, 16, 32, 64) if need <= b), -(-need // 8) * 8)


def _faiss_sums(seqs, archive, filled, k, *, bytes_: bool) -> np.ndarray:
    faiss = _faiss()
    trials, n, d = seqs.shape
    vocab = _vocab(seqs, archive)
    if bytes_ and vocab > 256:
        raise ValueError(f"kNN method 'faiss-bytes' needs tokens < 256, got {vocab - 1}")
    size = -(-d // 8) * 8 if bytes_ else faiss_code_bytes(d * vocab)

    def encode(x):
        if not bytes_:
            return onehot_bits(x, vocab, size)
        out = np.zeros((*x.shape[:-1], size), np.uint8)
        out[..., :d] = x
        return out

    threads = faiss.omp_get_max_threads()
    if n * archive.shape[1] < PARALLEL:  # OpenMP costs more than it gives on small calls
        faiss.omp_set_num_threads(1)
    try:
        search = _search_bytes if bytes_ else _search_flat
        return search(faiss, encode, encode(seqs), archive, filled, k, size)
    finally:
        faiss.omp_set_num_threads(threads)


def _search_flat(faiss, encode, queries, archive, filled, k, size):
    sums = np.zeros(queries.shape[:2], np.int64)
    for t, f in enumerate(filled.tolist()):
        if f == 0:
            continue
        index = faiss.IndexBinaryFlat(8 * size)
        index.use_heap = False  # counting selection: 2-3× the heap here
        for s in range(0, f, FAISS_ROWS):
            index.add(encode(archive[t, s : min(f, s + FAISS_ROWS)]))
        dist, _ = index.search(queries[t], min(k, f))
        sums[t] = dist.sum(axis=1, dtype=np.int64) // 2  # one-hot Hamming is twice the token's
    return sums


def _search_bytes(faiss, encode, queries, archive, filled, k, size):
    """A running heap per trial across blocks of archive rows shared by all trials."""
    trials, n = queries.shape[:2]
    heaps = []
    for f in filled.tolist():
        kt = min(k, max(f, 1))
        vals, ids = np.empty((n, kt), np.int32), np.empty((n, kt), np.int64)
        heap = faiss.int_maxheap_array_t()
        heap.nh, heap.k = n, kt
        heap.val, heap.ids = faiss.swig_ptr(vals), faiss.swig_ptr(ids)
        heap.heapify()
        heaps.append((heap, vals, ids))
    for s in range(0, archive.shape[1], FAISS_ROWS):
        block = encode(archive[:, s : s + FAISS_ROWS])
        for t, f in enumerate(filled.tolist()):
            rows = min(f - s, block.shape[1])
            if rows > 0:
                faiss.generalized_hammings_knn_hc(
                    heaps[t][0], faiss.swig_ptr(queries[t]), faiss.swig_ptr(block[t]), rows, size, 0
                )
    sums = np.zeros((trials, n), np.int64)
    for t, f in enumerate(filled.tolist()):
        if f > 0:
            sums[t] = heaps[t][1].sum(axis=1, dtype=np.int64)
    return sums
