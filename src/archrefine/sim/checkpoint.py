"""Checkpoints of the simulator's cycle loop, so a run killed at any moment resumes bit-exactly.

A checkpoint is one file, written atomically (temp file, fsync, rename) after every cycle: a magic
line, the length of a JSON header, the header, then the raw bytes of every array the header lists
(name, dtype, shape). Nothing in it is pickled, so reading one runs no code. It holds what the
next cycle reads and nothing else:

* the header: the cycles completed, the config (TOML) the run belongs to, the numpy
  `bit_generator.state` (every draw of the loop, the space and the paper generator comes from
  that one generator), and the fitness function's state where it has one (the first-epoch
  accuracy cache);
* `pool`, `pool_size`: the templates; `archive_rows` (what the cycles added, up to the fullest
  trial), `archive_filled`;
* `records/<metric>`: the per-cycle metrics so far, `(cycles, trials)`;
* `generator/<name>`: the generator's mutable state (its `state()`, restored by `load_state()`).

Whatever the loop builds before its first cycle (the space, the known archive, the NK tables,
the learned generator's pre-trained weights) is not saved: it is rebuilt from the seed, which
replays exactly the same draws, before the saved state overwrites what the cycles changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from archrefine.core.config import Config
from archrefine.core.store import StoreError, atomic_write_bytes

MAGIC = b"archrefine.simulate-checkpoint 1\n"
_BROKEN = (OSError, ValueError, KeyError, TypeError, IndexError, EOFError, RuntimeError)


class CheckpointError(StoreError):
    """A checkpoint that cannot be read, or that belongs to another config; one line."""


@dataclass
class LoopState:
    """Everything the cycle loop carries from one cycle to the next (besides the generator's,
    the fitness function's and the random generator's own state)."""

    cycle: int  # cycles completed
    pool: np.ndarray
    pool_size: np.ndarray
    rows: np.ndarray  # archive rows, (trials, capacity, d)
    filled: np.ndarray
    records: list[dict[str, np.ndarray]] = field(default_factory=list)
    known: int = 0  # leading archive rows rebuilt from the seed (the known architectures)


class Checkpoint:
    """The checkpoint file at `path` of a run of `config` (needed to save and restore only)."""

    def __init__(self, path: Path, config: Config | None = None):
        self.path = Path(path)
        self.config = None if config is None else config.to_toml()

    def save(
        self, state: LoopState, rng: np.random.Generator, generator: Any, fitness: Any = None
    ) -> None:
        """Write the state after `state.cycle` cycles, atomically."""
        width = int(state.filled.max(initial=0))
        arrays = {
            "pool": state.pool,
            "pool_size": state.pool_size,
            "archive_rows": state.rows[:, state.known : width],
            "archive_filled": state.filled,
        }
        for key in state.records[0] if state.records else ():
            arrays[f"records/{key}"] = np.stack([r[key] for r in state.records])
        if hasattr(generator, "state"):
            arrays |= {f"generator/{k}": v for k, v in generator.state().items()}
        blobs = [np.ascontiguousarray(a) for a in arrays.values()]
        header = {
            "cycle": state.cycle,
            "config": self.config,
            "rng": rng.bit_generator.state,
            "fitness": fitness.state() if hasattr(fitness, "state") else None,
            "arrays": [[k, b.dtype.str, b.shape] for k, b in zip(arrays, blobs, strict=True)],
        }
        text = json.dumps(header).encode()
        parts = [MAGIC, len(text).to_bytes(8, "little"), text, *(b.tobytes() for b in blobs)]
        atomic_write_bytes(self.path, b"".join(parts))

    def completed(self) -> int:
        """Cycles the checkpoint has completed (CheckpointError if it cannot be read)."""
        return int(self._read(arrays=False)[0]["cycle"])

    def restore(
        self, state: LoopState, rng: np.random.Generator, generator: Any, fitness: Any = None
    ) -> None:
        """Overwrite a freshly built loop (`state`, `rng`, `generator`, `fitness`) with the
        checkpoint, which must belong to this run's config."""
        header, arrays = self._read()
        if header["config"] != self.config:
            raise CheckpointError(f"{self.path}: written by a run with another config")
        try:
            cycles = int(header["cycle"])
            pool, pool_size = arrays["pool"], arrays["pool_size"]
            rows, filled = arrays["archive_rows"], arrays["archive_filled"]
            if pool.shape != state.pool.shape or filled.shape != state.filled.shape:
                raise ValueError("arrays do not fit this config")
            keys = [k.split("/", 1)[1] for k in arrays if k.startswith("records/")]
            records = [{k: arrays[f"records/{k}"][c] for k in keys} for c in range(cycles)]
            saved = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("generator/")}
            if hasattr(generator, "load_state"):
                generator.load_state(saved)
            if hasattr(fitness, "load_state"):
                fitness.load_state(header["fitness"])
            state.rows[:, state.known : state.known + rows.shape[1]] = rows
            state.filled[:] = filled
            rng.bit_generator.state = header["rng"]
        except _BROKEN as err:  # RuntimeError: a torch shape mismatch
            raise CheckpointError(f"{self.path}: not a readable checkpoint ({_why(err)})") from None
        state.cycle, state.pool, state.pool_size, state.records = cycles, pool, pool_size, records

    def _read(self, arrays: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        try:
            data = memoryview(self.path.read_bytes())
            if data[: len(MAGIC)] != MAGIC:
                raise ValueError("not a simulation checkpoint")
            at = len(MAGIC) + 8
            size = int.from_bytes(data[len(MAGIC) : at], "little")
            header = json.loads(bytes(data[at : at + size]))
            if not isinstance(header, dict):
                raise ValueError("no header")
            at += size
            found = {}
            for name, dtype, shape in header["arrays"]:
                kind = np.dtype(dtype)
                if kind.hasobject:
                    raise ValueError(f"{name}: object arrays are not read")
                n = kind.itemsize * int(np.prod(shape))
                if at + n > len(data):
                    raise ValueError("truncated")
                if arrays:
                    found[name] = np.frombuffer(data[at : at + n], kind).reshape(shape).copy()
                at += n
            if at != len(data):
                raise ValueError("trailing bytes")
            missing = {"cycle", "config", "rng"} - header.keys()
            if missing:
                raise ValueError(f"header lacks {', '.join(sorted(missing))}")
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no such file") from None
        except _BROKEN as err:
            raise CheckpointError(f"{self.path}: not a readable checkpoint ({_why(err)})") from None
        return header, found


def _why(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0] or type(err).__name__
