"""What the loop asks of a space: known architectures, validity, and the distance behind novelty
and diversity. `abstract` is the paper's space; `grounded` makes every sequence a real PyTorch
network (`archrefine.space`), valid exactly when it builds and runs."""

from __future__ import annotations

import numpy as np

from archrefine.core import metrics
from archrefine.core.config import Config
from archrefine.sim.base import Candidates


class AbstractSpace:
    """The paper's space: validity is the generator's own model, drawn as a Bernoulli."""

    measured = False  # True where the space carries measured fitness (a tabular benchmark)

    def __init__(self, config: Config):
        self.config = config
        self.length, self.vocab = config.space.length, config.space.vocab

    def format(self) -> np.ndarray | None:
        """Which tokens may stand at each position `(d, V)` as a starting distribution, or None
        for uniform: what a generator knows of the syntax before it knows anything else."""
        return None

    def known(self, trials: int, rng: np.random.Generator) -> np.ndarray:
        s = self.config.space
        return rng.integers(0, s.vocab, size=(trials, s.known, s.length), dtype=np.int16)

    def validity(self, cands: Candidates, generator, rng: np.random.Generator) -> np.ndarray:
        p = generator.validity(cands)
        return rng.random(p.shape) < p

    def novelty(self, seqs, archive, filled, k) -> np.ndarray:
        return metrics.novelty(seqs, archive, filled, k)

    def diversity(self, seqs: np.ndarray) -> np.ndarray:
        return metrics.diversity(seqs, self.vocab)


class GroundedSpace(AbstractSpace):
    """Sequences over the 30-token grounded vocabulary. Validity is the exact checker (the
    generator's validity model is not used); the known archive is `space.KNOWN`. With
    `space.distance = "canonical"`, distances are normalized edit distances between canonical
    forms (no-ops and anything after the head removed), since padding does not change a network.
    """

    def __init__(self, config: Config):
        super().__init__(config)
        from archrefine import space

        self.space = space
        self.length, self.vocab = space.LENGTH, len(space.VOCAB)
        self.canonical = config.space.distance == "canonical"

    def known(self, trials: int, rng: np.random.Generator) -> np.ndarray:
        return np.broadcast_to(
            self.space.KNOWN_ARRAY.astype(np.int16), (trials, *self.space.KNOWN_ARRAY.shape)
        ).copy()

    def validity(self, cands: Candidates, generator, rng: np.random.Generator) -> np.ndarray:
        return self.space.is_valid(cands.seqs)

    def _forms(self, seqs: np.ndarray) -> list[list[tuple[int, ...]]]:
        return [[self.space.canonical(s) for s in trial] for trial in seqs]

    def novelty(self, seqs, archive, filled, k) -> np.ndarray:
        if not self.canonical:
            return super().novelty(seqs, archive, filled, k)
        from rapidfuzz.distance import Levenshtein
        from rapidfuzz.process import cdist

        out = np.empty(seqs.shape[:2])
        for t, (forms, arc) in enumerate(zip(self._forms(seqs), archive, strict=True)):
            ref = [self.space.canonical(a) for a in arc[: filled[t]]]
            dist = cdist(forms, ref, scorer=Levenshtein.normalized_distance, dtype=np.float32)
            kk = min(k, len(ref))
            out[t] = np.partition(dist, kk - 1, axis=1)[:, :kk].mean(axis=1)
        return out

    def diversity(self, seqs: np.ndarray) -> np.ndarray:
        if not self.canonical:
            return super().diversity(seqs)
        from rapidfuzz.distance import Levenshtein
        from rapidfuzz.process import cdist

        n = seqs.shape[1]
        out = np.empty(seqs.shape[0])
        for t, forms in enumerate(self._forms(seqs)):
            dist = cdist(forms, forms, scorer=Levenshtein.normalized_distance, dtype=np.float32)
            out[t] = dist.sum() / (n * (n - 1))
        return out


class NasBenchSpace(AbstractSpace):
    """NAS-Bench-Graph cells (docs/nasbench.md): valid means measured by the benchmark, and
    fitness is the measured validation accuracy. The known archive is the benchmark's
    hand-designed cells (GCN, GAT, GIN, GraphSAGE, ...)."""

    def __init__(self, config: Config):
        super().__init__(config)
        from archrefine.space.nasbench import NasBenchGraph

        self.bench = NasBenchGraph(config.space.dataset)
        self.measured = True
        self.length, self.vocab = self.bench.length, self.bench.vocab

    def known(self, trials: int, rng: np.random.Generator) -> np.ndarray:
        cells = self.bench.known(max(self.config.space.known, 1), rng).astype(np.int16)
        return np.broadcast_to(cells, (trials, *cells.shape)).copy()

    def format(self) -> np.ndarray:
        """Uniform over the tokens that occur at each position of the benchmark's cells (input
        indices where inputs go, operations where operations go)."""
        archs = self.bench.archs()
        seen = np.zeros((self.length, self.vocab))
        seen[np.arange(self.length)[None, :], archs] = 1.0
        return seen / seen.sum(axis=1, keepdims=True)

    def validity(self, cands: Candidates, generator, rng: np.random.Generator) -> np.ndarray:
        return self.bench.is_valid(cands.seqs)

    def fitness(self, seqs: np.ndarray) -> np.ndarray:
        return self.bench.fitness(seqs)


SPACES = {"abstract": AbstractSpace, "grounded": GroundedSpace, "nasbench-graph": NasBenchSpace}


def make_space(config: Config) -> AbstractSpace:
    return SPACES[config.space.kind](config)
