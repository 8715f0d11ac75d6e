"""One cycle's row of `metrics.parquet`, in the simulator's columns (docs/real-loop.md, Metrics).

validity = share of the population that built, ran and had the right output shape; novelty =
mean MinHash-Jaccard novelty of the cycle's code against the archive as it stood when the cycle
began; diversity = mean pairwise MinHash-Jaccard distance within the cycle; fitness = mean
held-out accuracy of the valid ones; beside them the structural yardstick shared with the
simulator (`grounded_novelty`, `grounded_diversity`) and a count per status.
"""

from __future__ import annotations

import numpy as np

from archrefine.code.fingerprint import fingerprint
from archrefine.code.novelty_code import CodeNovelty
from archrefine.code.tokens import to_tokens
from archrefine.core import metrics as simmetrics
from archrefine.real.config import RealConfig

GROUNDED_K = 15  # neighbours of the grounded novelty, as the simulator's loop.novelty_k


def mapped(code: str) -> list[int] | None:
    """`code`'s structure in the grounded vocabulary, or None where it does not map."""
    try:
        return to_tokens(fingerprint(code))
    except Exception:  # noqa: BLE001 - CodeError, or e.g. RecursionError on hostile code
        return None


def cycle_metrics(rows, archive, mapped, c, rate, loss, config: RealConfig) -> dict:
    n = config.loop.population
    coded = [r for r in rows if r["novelty"] is not None]
    ok = [r for r in rows if r["status"] == "ok"]
    acc = [r["accuracy"] for r in ok if r["accuracy"] is not None]
    counts = {s: sum(r["status"] == s for r in rows) for s in _COUNTED}
    row = dict(
        trial=0, cycle=c,
        validity=len(ok) / n,
        novelty=float(np.mean([r["novelty"] for r in coded])) if coded else np.nan,
        diversity=_code_diversity([r["code"] for r in coded], archive),
        fitness=float(np.mean(acc)) if acc else np.nan,
        best_fitness=float(np.max(acc)) if acc else np.nan,
        mutation_rate=rate,
        pool_size=sum(bool(r["selected"]) for r in rows),
        bonus=np.nan,
        loss=np.nan if loss is None else float(loss),
        duplicates=sum(bool(r["near_duplicate"]) for r in coded),
    )  # fmt: skip
    row |= {f"n_{s}": v for s, v in counts.items()}
    row |= _grounded([r["code"] for r in coded], mapped)
    return row


_COUNTED = ("ok", "invalid", "timeout", "crashed", "oom", "forbidden", "no_code", "rejected")


def _code_diversity(codes: list[str], archive: CodeNovelty) -> float:
    """Mean pairwise distance (1 − estimated Jaccard) among the cycle's code."""
    if len(codes) < 2:
        return np.nan
    sketches = np.stack([np.asarray(archive.sketch(code).hashvalues) for code in codes])
    same = (sketches[:, None, :] == sketches[None, :, :]).mean(axis=2)
    upper = np.triu_indices(len(codes), k=1)
    return float(1.0 - same[upper].mean())


def _grounded(codes: list[str], mapped_archive: np.ndarray) -> dict:
    """Novelty and diversity on the code mapped into the grounded vocabulary (the simulator's
    Hamming yardstick), and the share of code that maps at all."""
    from archrefine.space import LENGTH, VOCAB, token_id

    seqs = [s for s in (mapped(code) for code in codes) if s is not None]
    out = dict(mapped=len(seqs) / len(codes) if codes else np.nan)
    if not seqs:
        return out | dict(grounded_novelty=np.nan, grounded_diversity=np.nan)
    arr = np.array([s + [token_id("none")] * (LENGTH - len(s)) for s in seqs], dtype=np.int16)
    filled = np.array([len(mapped_archive)])
    nov = simmetrics.novelty(arr[None], mapped_archive[None], filled, GROUNDED_K)
    div = simmetrics.diversity(arr[None], len(VOCAB)) if len(arr) > 1 else [np.nan]
    novelty = float(np.nanmean(nov)) if np.isfinite(nov).any() else np.nan  # empty archive
    return out | dict(grounded_novelty=novelty, grounded_diversity=float(div[0]))
