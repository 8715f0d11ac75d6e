"""Checkpoints of the simulator's cycle loop, so a run killed at any moment resumes bit-exactly.

A checkpoint is one file, written atomically (temp file, fsync, rename) at the end of a cycle: a
magic line, the length of a JSON header, the header, then the raw bytes of every array the header
lists (name, dtype, shape). Nothing in it is pickled, so reading one runs no code. `Checkpointer`
writes one every `checkpoint.every_s` seconds (0: every cycle), after the last cycle, and when the
run stops by an exception (Ctrl-C included) between two of them: it keeps the latest cycle's
state in memory for that. A `kill -9` leaves the last one written, and the resumed run redoes the
cycles since. It holds what the next cycle reads and nothing else:

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

import hashlib
import json
import time
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


@dataclass
class Capture:
    """One cycle's state as `Checkpoint.write` needs it. The loop only appends archive rows
    beyond `filled` and records after `header["cycle"]`, so both are kept by reference."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]  # pool, pool_size, generator/<name>: copies
    rows: np.ndarray
    known: int
    filled: np.ndarray
    records: list[dict[str, np.ndarray]]


class Checkpoint:
    """The checkpoint file at `path` of a run of `config` (needed to save and restore only)."""

    def __init__(self, path: Path, config: Config | None = None):
        self.path = Path(path)
        self.config = None if config is None else config.to_toml()

    def save(
        self, state: LoopState, rng: np.random.Generator, generator: Any, fitness: Any = None
    ) -> None:
        """Write the state after `state.cycle` cycles, atomically."""
        self.write(self.capture(state, rng, generator, fitness))

    def capture(
        self, state: LoopState, rng: np.random.Generator, generator: Any, fitness: Any = None
    ) -> Capture:
        """The state after `state.cycle` cycles, held in memory (cheap: the archive and the
        records are kept by reference, since later cycles only append to them)."""
        arrays = {"pool": np.array(state.pool), "pool_size": np.array(state.pool_size)}
        if hasattr(generator, "state"):
            arrays |= {f"generator/{k}": np.array(v) for k, v in generator.state().items()}
        header = {
            "cycle": state.cycle,
            "config": self.config,
            "rng": rng.bit_generator.state,
            "fitness": fitness.state() if hasattr(fitness, "state") else None,
        }
        return Capture(header, arrays, state.rows, state.known, state.filled.copy(), state.records)

    def write(self, cap: Capture) -> None:
        """Write a captured state, atomically."""
        width = int(cap.filled.max(initial=0))
        rows = cap.rows[:, cap.known : width]
        beyond = np.arange(cap.known, width)[None, :] >= cap.filled[:, None]
        if beyond.any() and rows[beyond].any():  # rows a later cycle appended: not yet there
            rows = rows.copy()
            rows[beyond] = 0
        arrays = {
            "pool": cap.arrays["pool"],
            "pool_size": cap.arrays["pool_size"],
            "archive_rows": rows,
            "archive_filled": cap.filled,
        }
        records = cap.records[: cap.header["cycle"]]
        for key in records[0] if records else ():
            arrays[f"records/{key}"] = np.stack([r[key] for r in records])
        arrays |= {k: v for k, v in cap.arrays.items() if k.startswith("generator/")}
        blobs = [np.ascontiguousarray(a).tobytes() for a in arrays.values()]
        header = cap.header | {"arrays": [[k, a.dtype.str, a.shape] for k, a in arrays.items()]}
        header["digest"] = _digest(header, blobs)
        text = json.dumps(header).encode()
        parts = [MAGIC, len(text).to_bytes(8, "little"), text, *blobs]
        atomic_write_bytes(self.path, b"".join(parts))

    def completed(self) -> int:
        """Cycles the checkpoint has completed (CheckpointError if it cannot be read, or, for a
        Checkpoint made with the run's config, if another config wrote it: `--resume` asks
        before it records itself in run.json)."""
        header = self._read(arrays=False)[0]
        if self.config is not None and header.get("config") != self.config:
            raise CheckpointError(f"{self.path}: written by a run with another config")
        return header["cycle"]

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
            found, blobs = {}, []
            for name, dtype, shape in header["arrays"]:
                kind = np.dtype(dtype)
                if kind.hasobject:
                    raise ValueError(f"{name}: object arrays are not read")
                n = kind.itemsize * int(np.prod(shape))
                if at + n > len(data):
                    raise ValueError("truncated")
                blobs.append(data[at : at + n])
                if arrays:
                    found[name] = np.frombuffer(data[at : at + n], kind).reshape(shape).copy()
                at += n
            if at != len(data):
                raise ValueError("trailing bytes")
            missing = {"cycle", "config", "rng"} - header.keys()
            if missing:
                raise ValueError(f"header lacks {', '.join(sorted(missing))}")
            _check_cycle(header)
            saved = header.pop("digest", None)  # (none in checkpoints written before it)
            if saved is not None and saved != _digest(header, blobs):
                raise ValueError("damaged: its bytes do not match the digest written with them")
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no such file") from None
        except _BROKEN as err:
            raise CheckpointError(f"{self.path}: not a readable checkpoint ({_why(err)})") from None
        return header, found


def _digest(header: dict, blobs: list) -> str:
    """BLAKE2b of the header (every key but the digest, in a canonical form) and the arrays'
    bytes: a flipped bit anywhere, which a resume would otherwise read as a state, is found."""
    h = hashlib.blake2b(json.dumps(header, sort_keys=True).encode(), digest_size=16)
    for blob in blobs:
        h.update(blob)
    return h.hexdigest()


_now = time.monotonic  # a module attribute, so a test can run the clock


class Checkpointer:
    """Decides when a run's checkpoint is written: `every_s` seconds after the last one (0: after
    every cycle), always after the last cycle, and, through `flush`, when the run stops between
    two of them. Writing is the costly part (an fsync); holding a cycle's state is not."""

    def __init__(self, checkpoint: Checkpoint, every_s: float, cycles: int):
        self.checkpoint, self.every_s, self.cycles = checkpoint, every_s, cycles
        self.since = _now()
        self.pending: Capture | None = None  # a completed cycle not yet written

    def cycle_done(
        self, state: LoopState, rng: np.random.Generator, generator: Any, fitness: Any = None
    ) -> None:
        """Write the state after `state.cycle` cycles if it is time to, else hold it."""
        self.pending = self.checkpoint.capture(state, rng, generator, fitness)
        if state.cycle >= self.cycles or _now() - self.since >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Write the latest completed cycle's state if the file is behind it."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.checkpoint.write(pending)
            self.since = _now()


def _check_cycle(header: dict[str, Any]) -> None:
    """The header's `cycle` is a count that the per-cycle records agree with: a damaged one
    would resume at the wrong cycle, with the random state of another, and silently differ."""
    cycle = header["cycle"]
    if not isinstance(cycle, int) or isinstance(cycle, bool) or cycle < 0:
        raise ValueError(f"cycle {json.dumps(cycle)[:40]} is not a count of cycles")
    rows = {tuple(shape[:1]) for name, _, shape in header["arrays"] if name.startswith("records/")}
    if rows != ({(cycle,)} if cycle else set()):
        raise ValueError(f"its records do not hold the {cycle} cycles it says are done")


def _why(err: BaseException) -> str:
    return (str(err).splitlines() or [""])[0] or type(err).__name__
