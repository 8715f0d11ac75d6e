"""MAP-Elites for the simulator: one pyribs `GridArchive` per trial over two descriptors
(docs/interventions.md), loaded without the rest of pyribs (see `_grid_archive`)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np

from archrefine.core.config import ConfigError

DESCRIPTORS = {
    "grounded": ("depth: layers before the head", "width: mean output width / 128"),
    "abstract": ("mean token / (V − 1)", "distinct tokens / d"),
}


def descriptors(seqs: np.ndarray, space: str, vocab: int) -> np.ndarray:
    """Two descriptors per sequence `(..., d) → (..., 2)`, each in [0, 1] (docs/interventions.md).

    Grounded networks: depth (tokens with weights before the first head, over d) × width (the
    mean output width of the layers that set one, over 128). Other spaces have no structure to
    read, so two token statistics stand in: the mean token id and the share of distinct tokens.
    """
    d = seqs.shape[-1]
    if space == "grounded":
        from archrefine.space.vocab import TOKENS  # the space layer sits below sim

        kinds = np.array([t.kind for t in TOKENS])
        weighted = np.array([bool(t.prefix) for t in TOKENS])
        out = np.array([max(t.out, 0) for t in TOKENS], dtype=float)
        head = np.cumsum(kinds[seqs] == "head", axis=-1)
        before = (head == 0) | ((head == 1) & (kinds[seqs] == "head"))
        layer = weighted[seqs] & before
        width_set = layer & (out[seqs] > 0)
        depth = layer.sum(axis=-1) / d
        with np.errstate(invalid="ignore"):
            width = (out[seqs] * width_set).sum(axis=-1) / width_set.sum(axis=-1) / 128
        return np.stack([depth, np.nan_to_num(width)], axis=-1)
    ordered = np.sort(seqs, axis=-1)
    distinct = 1 + (np.diff(ordered, axis=-1) != 0).sum(axis=-1)
    return np.stack([seqs.mean(axis=-1) / max(vocab - 1, 1), distinct / d], axis=-1)


class _Blocked(importlib.abc.MetaPathFinder):
    """Makes `import <name>` fail for the given top-level packages not yet imported, as if they
    were not installed (a finder is asked only for modules not in `sys.modules`)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ImportError(f"{name} is not needed by the simulator")
        return None


_GRID: list[type] = []  # the class, once loaded


def _grid_archive() -> type:
    """pyribs' `GridArchive`, loaded with what it needs and nothing more (once per process).

    `import ribs.archives` imports every archive pyribs has: scikit-learn and scipy (CVT), numba
    (numpy-groupies' compiled `aggregate`, whose first call compiles) and torch (optional tensor
    support): ~250 MB of peak memory in a simulator process, where the grid needs ~10 MB. So the
    grid's own module is loaded under empty `ribs`/`ribs.archives` packages with those blocked,
    its `aggregate` is numpy-groupies' numpy one (the same integer argmax, first index on ties),
    and the modules this loaded leave `sys.modules`, so a later `import ribs` is the whole
    package as usual. Should pyribs' layout change, the whole package is imported instead.
    """
    if not _GRID:
        if importlib.util.find_spec("ribs") is None:
            raise ConfigError(
                "intervention.qd 'map-elites' needs pyribs: pip install 'archrefine[interventions]'"
            )
        try:
            grid = _lean_grid()
        except Exception:  # noqa: BLE001  (another pyribs layout: its documented import)
            try:
                grid = _imported(lambda: importlib.import_module("ribs.archives")).GridArchive
            except ImportError as err:
                raise ConfigError(
                    f"intervention.qd 'map-elites': pyribs failed to load: {err}"
                ) from None
        _GRID.append(grid)
    return _GRID[0]


def _lean_grid() -> type:
    """`ribs.archives._grid_archive.GridArchive` without the packages' `__init__` (see above)."""
    if "ribs.archives" in sys.modules:
        return sys.modules["ribs.archives"].GridArchive
    root = Path(importlib.util.find_spec("ribs").submodule_search_locations[0])
    before = set(sys.modules)
    try:
        for name, folder in (("ribs", root), ("ribs.archives", root / "archives")):
            sys.modules[name] = types.ModuleType(name)
            sys.modules[name].__path__ = [str(folder)]
        grid = _imported(
            lambda: importlib.import_module("ribs.archives._grid_archive"),
            blocked=("torch", "cupy", "zuko", "numba", "sklearn", "scipy"),
        )
        grid.aggregate = importlib.import_module("numpy_groupies").aggregate_np
        return grid.GridArchive
    finally:
        for name in set(sys.modules) - before:
            if name.partition(".")[0] in ("ribs", "numpy_groupies"):
                del sys.modules[name]


def _imported(load, blocked: tuple[str, ...] = ("torch", "cupy", "zuko")):
    """`load()` with `blocked` packages unimportable meanwhile (torch only when not imported:
    pyribs imports it whenever installed, for optional tensor support, ~180 MB)."""
    blocker = _Blocked(tuple(name for name in blocked if name not in sys.modules))
    sys.meta_path.insert(0, blocker)
    try:
        return load()
    finally:
        sys.meta_path.remove(blocker)


class EliteArchive:
    """One pyribs `GridArchive` per trial over `descriptors`, objective = the selection score."""

    def __init__(self, trials: int, length: int, cells: int, space: str, vocab: int, seed: int):
        GridArchive = _grid_archive()

        self.space, self.vocab = space, vocab
        self.grids = [
            GridArchive(
                solution_dim=length,
                dims=[cells, cells],
                ranges=[(0.0, 1.0 + 1e-9)] * 2,
                seed=seed + t,
                dtype=np.float64,
            )
            for t in range(trials)
        ]

    def add(self, seqs: np.ndarray, score: np.ndarray, valid: np.ndarray) -> None:
        desc = descriptors(seqs, self.space, self.vocab)
        for t, grid in enumerate(self.grids):
            keep = valid[t]
            if keep.any():
                grid.add(seqs[t][keep].astype(np.float64), score[t][keep], desc[t][keep])

    def select(self, k: int, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """k elites per trial drawn uniformly without replacement (all of them when fewer)."""
        pool = np.zeros((len(self.grids), k, d), dtype=np.int16)
        size = np.zeros(len(self.grids), dtype=int)
        for t, grid in enumerate(self.grids):
            data = grid.data(["solution", "index"])
            if len(data["index"]) == 0:
                continue
            elites = data["solution"][np.argsort(data["index"])]  # by cell, not insertion order
            pick = rng.permutation(len(elites))[:k]
            pool[t, : len(pick)] = np.rint(elites[pick]).astype(np.int16)
            size[t] = len(pick)
        return pool, size


class EliteArchiveState:
    """Save and restore an `EliteArchive` as plain arrays (checkpoints pickle nothing)."""

    @staticmethod
    def dump(arc: EliteArchive) -> dict[str, np.ndarray]:
        data = [g.data() for g in arc.grids]
        return {
            "count": np.array([len(x["objective"]) for x in data]),
            "solution": np.concatenate([x["solution"] for x in data]),
            "objective": np.concatenate([x["objective"] for x in data]),
            "measures": np.concatenate([x["measures"] for x in data]),
        }

    @staticmethod
    def load(arc: EliteArchive, saved: dict[str, np.ndarray]) -> None:
        """Re-add the saved elites to empty grids: each lands in its own cell as before."""
        ends = np.cumsum(saved["count"])
        for t, grid in enumerate(arc.grids):
            grid.clear()
            part = slice(ends[t] - saved["count"][t], ends[t])
            if saved["count"][t]:
                grid.add(saved["solution"][part], saved["objective"][part], saved["measures"][part])
