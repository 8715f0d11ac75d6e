"""The kernels compiled ahead of time (`core/aot.py`): the same numbers as numba's JIT, loaded
without importing numba, the GIL released, strided or mistyped arrays made right before the
call, and the detached build that makes the module for later processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from archrefine.core import aot, fast

pytestmark = pytest.mark.skipif(
    not fast.available(), reason="numba is not installed (pip install 'archrefine[fast]')"
)


@pytest.fixture(scope="module")
def compiled():
    """The module's kernels and the JIT's, built where it is missing (~15 s, once per
    machine); skipped with the build's reason where this machine cannot build it."""
    try:
        fast.build_ahead()
    except Exception as exc:  # no C compiler or Python headers: the JIT stays in use
        pytest.skip(f"cannot build the ahead-of-time module here: {exc}")
    kernels = aot.load(fast._source())
    assert kernels is not None
    return kernels, fast._warm(fast._build(fast._import_numba()))


def _inputs(seed: int, trials: int = 40, n: int = 12, d: int = 15, vocab: int = 30):
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(rng.dirichlet(np.ones(vocab) * 0.3, size=(trials, d)), axis=2)
    u, mutate_u = rng.random((trials, n, d)), rng.random((trials, n, d))
    pool = rng.integers(0, vocab, (trials, 4, d)).astype(np.int16)
    pick = rng.integers(0, 4, (trials, n))
    fresh = rng.integers(0, n + 1, trials).astype(np.int64)
    return rng, cdf, u, mutate_u, pool, pick, fresh


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_kernel_gives_the_jits_numbers(compiled, seed: int) -> None:
    ahead, jit = compiled
    rng, cdf, u, mutate_u, pool, pick, fresh = _inputs(seed)
    args = (cdf, u, mutate_u, 0.3, pick, pool, fresh)
    (s, w), (s2, w2) = ahead.propose(*args), jit.propose(*args)
    assert np.array_equal(s, s2) and np.array_equal(w, w2)
    assert np.array_equal(ahead.sample_categorical(cdf, u), jit.sample_categorical(cdf, u))
    cost = rng.random((*cdf.shape[:2], cdf.shape[2])) * 3
    assert np.array_equal(ahead.written_cost(cost, s, w), jit.written_cost(cost, s, w))
    mask = rng.random(s.shape[:2]) < 0.5
    assert np.array_equal(ahead.token_counts(s, 30, mask), jit.token_counts(s, 30, mask))
    archive = rng.integers(0, 30, (s.shape[0], 50, s.shape[2])).astype(np.int16)
    queries = fast.pack_bytes(s, 2)
    rows = np.ascontiguousarray(fast.pack_bytes(archive, 2).swapaxes(1, 2))
    filled = rng.integers(0, 51, s.shape[0]).astype(np.int64)
    got = ahead.knn_sums(queries, rows, filled, 5, 15, 16)
    assert np.array_equal(got, jit.knn_sums(queries, rows, filled, 5, 15, 16))


def test_strided_and_mistyped_arrays_are_made_right_first(compiled) -> None:
    """A compiled module reads any array as contiguous of its declared type: the wrapper makes
    a strided view contiguous and converts a dtype, so the answer stays the JIT's."""
    ahead, jit = compiled
    _, cdf, u, mutate_u, pool, pick, fresh = _inputs(3, n=24)
    strided = (cdf, u[:, ::2], mutate_u[:, ::2], 0.5, pick[:, ::2].astype(np.int32), pool, fresh)
    assert not strided[1].flags.c_contiguous
    got, want = ahead.propose(*strided), jit.propose(*strided)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    with pytest.raises(TypeError, match="expected 3 dimensions, got 2"):
        ahead.sample_categorical(cdf, u[:, 0])
    with pytest.raises(TypeError, match="takes 2 arguments"):
        ahead.sample_categorical(cdf)
    with pytest.raises(ValueError, match="outside the vocabulary"):  # the kernel's own error
        ahead.token_counts(np.full((1, 1, 2), 40, np.int16), 30, np.ones((1, 1), bool))


def test_the_compiled_kernels_release_the_gil(compiled) -> None:
    """The simulator computes novelty on a second thread beside the first's work: a module
    whose wrappers held the GIL would run them one after the other. Holding it, the counting
    thread could not count once during the call."""
    ahead, _ = compiled
    rng = np.random.default_rng(0)
    queries = fast.pack_bytes(rng.integers(0, 30, (300, 50, 15)).astype(np.int16), 2)
    rows = np.ascontiguousarray(queries[:, :40].repeat(20, axis=1).swapaxes(1, 2))
    filled = np.full(300, 800, np.int64)
    count, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        time.sleep(0.05)
        before = count[0]
        started = time.perf_counter()
        ahead.knn_sums(queries, rows, filled, 15, 15, 4096)
        took, during = time.perf_counter() - started, count[0] - before
    finally:
        stop.set()
        thread.join()
    assert took > 0.02 and during > 0, (took, during)


def test_a_process_uses_the_module_without_importing_numba(compiled) -> None:
    code = "import sys; from archrefine.core import fast; k = fast.kernels(); "
    code += "print(k.propose.__name__, 'numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["propose", "False"]
    env = os.environ | {"ARCHREFINE_NO_AOT": "1"}  # switched off: numba's JIT, as before
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["propose", "True"]


@pytest.mark.slow
def test_the_first_process_starts_a_detached_build_for_the_next(tmp_path: Path, monkeypatch):
    """`start` leaves no child behind (the builder is its own session's, its parent gone), a
    second `start` while it builds starts nothing, and what it builds loads."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    source = fast._source()
    path = aot.module_path(source)
    assert path.parent == tmp_path / "archrefine" and aot.load(source) is None
    aot.start(source)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # nothing of ours to reap: the builder is detached
    deadline = time.time() + 300
    while not path.exists() and time.time() < deadline:
        if path.with_suffix(".failed").exists():
            pytest.skip(f"cannot build here: {path.with_suffix('.failed').read_text()}")
        time.sleep(0.2)
    kernels = aot.load(source)
    assert kernels is not None
    assert not [p for p in path.parent.iterdir() if p.is_dir()]  # no build directory left
    cdf, u = np.cumsum(np.full((2, 3, 4), 0.25), axis=2), np.full((2, 5, 3), 0.6)
    assert (kernels.sample_categorical(cdf, u) == 2).all()


def test_start_does_nothing_when_off_built_or_failed_before(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    started = []

    class Popen:  # records what would start
        def __init__(self, *args, **kwargs):
            started.append(args)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(aot.subprocess, "Popen", Popen)
    path = aot.module_path(b"a kernel")
    path.parent.mkdir(parents=True)
    path.with_suffix(".failed").write_text("CompilerError: no cc\n")
    aot.start(b"a kernel")
    monkeypatch.setenv("ARCHREFINE_NO_AOT", "1")
    aot.start(b"another kernel")
    assert started == [] and aot.load(b"another kernel") is None
    monkeypatch.delenv("ARCHREFINE_NO_AOT")
    assert aot.module_path(b"a kernel") != aot.module_path(b"another kernel")
    path.with_suffix(".failed").unlink()
    path.write_bytes(b"not a shared object")
    aot.start(b"a kernel")  # built already: nothing to do
    assert started == []
    assert aot.load(b"a kernel") is None and not path.exists()  # damaged: removed for a rebuild
    aot.start(b"a kernel")
    assert len(started) == 1 and "--aot" in started[0][0]


def test_the_key_ignores_the_clock_but_not_the_cpu(monkeypatch) -> None:
    """A machine that scales its clock reports another `cpu MHz` at every read: in the key, it
    would have had each process build a module of its own."""
    entry = "processor\t: 0\nmodel name\t: {}\ncpu MHz\t\t: {}\nflags\t\t: sse2 avx2\n\n"
    read, keys = aot._read, []
    for model, mhz in [("Xeon", "2000.0"), ("Xeon", "3412.5"), ("EPYC", "2000.0")]:
        cpuinfo = (entry.format(model, mhz) * 2).encode()

        def fake(path, cpuinfo=cpuinfo):
            return cpuinfo if path == "/proc/cpuinfo" else read(path)

        monkeypatch.setattr(aot, "_read", fake)
        keys.append(aot.key(b"kernels"))
    assert keys[0] == keys[1] != keys[2]
