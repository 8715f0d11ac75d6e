"""How new a piece of model-written code is: MinHash-estimated Jaccard similarity of token shingles.

Text similarity on raw source would call a copy with renamed variables "novel" and two nets that
differ in one layer "the same" as two nets with the same comments. So the source is tokenized
(Python's `tokenize`), comments, layout and docstrings are dropped, identifiers are replaced by
`ID` — except keywords, builtins, `torch`/`nn`/`F` and the API names reached through them
(`nn.Conv2d`, `F.relu`, `x.view`), which carry the structure — and the novelty of a candidate is
one minus its largest estimated Jaccard similarity to an archive, over sets of `shingle`
consecutive tokens. MinHash sketches keep this cheap. A candidate is a near duplicate exactly when
its largest estimated Jaccard reaches the threshold, so the flag and the novelty never disagree;
an LSH index only narrows down whom to compare with, banded so that it cannot miss (see `_lsh`).

The defaults (10-token shingles, 256 permutations, near-duplicate at Jaccard >= 0.90) are those
of Khalid et al. (2026), arXiv:2601.02997.

Example
-------
>>> nov = CodeNovelty()
>>> nov.seed_with_known()  # doctest: +SKIP
19
>>> nov.score(source), nov.is_near_duplicate(source)  # doctest: +SKIP
(0.62, False)
"""

from __future__ import annotations

import builtins
import hashlib
import io
import keyword
import threading
import tokenize

import numpy as np
from cachetools import LRUCache, cached
from datasketch import MinHash, MinHashLSH

from archrefine.code.ast_helpers import source_key
from archrefine.code.fingerprint import fingerprint

__all__ = ["CodeNovelty", "code_tokens", "held_structures", "structure"]

KEPT_NAMES = frozenset({"torch", "nn", "F", "self", "super", "forward", "__init__"})
BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_"))
"""Kept only where called (`range(`, `len(`): `input` or `id` as a variable name is a name."""
_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
_STRINGS = {tokenize.STRING} | {
    getattr(tokenize, name) for name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
    if hasattr(tokenize, name)
}  # fmt: skip
_SKETCHES: LRUCache = LRUCache(maxsize=512)
"""MinHash values of the sources sketched last, by setting and SHA-256 (2 KB each at 256
permutations, so ~1 MB for the default; 16 MB at the largest `num_perm`)."""


def code_tokens(source: str) -> list[str]:
    """The normalized tokens of `source` that shingles are built from (see the module doc).

    Source that does not tokenize to the end (unclosed brackets, bad indentation) keeps the
    tokens read before the problem: broken candidates still get a novelty.
    """
    lines: list[list[tokenize.TokenInfo]] = [[]]
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                lines.append([])
            elif tok.type not in _LAYOUT:
                lines[-1].append(tok)
    except (tokenize.TokenError, SyntaxError):
        pass
    code = [line for line in lines if line and any(t.type not in _STRINGS for t in line)]
    kept = set(KEPT_NAMES)
    for line in code:  # names imported from torch (`from torch.nn import Conv2d`) are API names
        words = [t.string for t in line]
        if words[:1] == ["from"] and len(words) > 1 and words[1] == "torch" and "import" in words:
            kept.update(w for w in words[words.index("import") + 1 :] if w.isidentifier())
    out: list[str] = []
    for line in code:
        depth = 0
        for i, tok in enumerate(line):
            depth += (tok.string in "([{") - (tok.string in ")]}") if tok.type == tokenize.OP else 0
            if tok.type == tokenize.NAME:
                after_dot = i >= 2 and line[i - 1].string == "."
                api = after_dot and line[i - 2].string != "self"  # x.view, nn.Conv2d, F.relu
                follows = line[i + 1].string if i + 1 < len(line) else ""
                kwarg = depth > 0 and follows == "="
                called = follows == "(" and tok.string in BUILTINS
                keep = keyword.iskeyword(tok.string) or tok.string in kept or api or kwarg or called
                out.append(tok.string if keep else "ID")
            elif tok.type in _STRINGS:
                if tok.type != tokenize.STRING and tok.string and out and out[-1] == "STR":
                    continue  # the rest of an f-string (Python >= 3.12 splits it up)
                out.append("STR")
            else:
                out.append(tok.string)
    return out


def structure(source: str) -> str | None:
    """A key for the network `source` runs: the SHA-1 of the forward ops its fingerprint reads
    (what `forward` reaches: no dead branch, no layer it never calls, no identity op), with the
    hyperparameters of `ops.HYPER` (`Fingerprint.detail`), or None when that reading is
    too thin to vouch for: no `Conv2d`/`Linear`, or anything unresolved (`?`). Two sources with
    the same key are the same network, however different their text."""
    if not isinstance(source, str):
        return None
    try:
        ops = fingerprint(source).detail
    except Exception:  # noqa: BLE001 - unreadable code simply has no structural key
        return None
    return _key(ops)


def held_structures(source: str) -> list[str]:
    """The `structure` keys of the networks `source` holds besides `Net`
    (`Fingerprint.held`), leaving out each that `Net` is read to run inside a larger network
    (a backbone under a new head is not a copy of the backbone). A copy of a known network
    that `Net` calls in a way the reader does not follow (`getattr(self, "r")(x)`, a dict, a
    local variable, `self.r.forward(x)`) was read as an empty `Net`, and scored as novel text."""
    try:
        found = fingerprint(source)
    except Exception:  # noqa: BLE001
        return []
    keys = []
    for part in found.held:
        if (key := _key(part)) is not None and not _runs_within(part, found.detail):
            keys.append(key)
    return keys


def _key(ops: tuple[str, ...]) -> str | None:
    if any("?" in op for op in ops) or not any(op.startswith(("Conv2d(", "Linear(")) for op in ops):
        return None
    return hashlib.sha1("\n".join(ops).encode()).hexdigest()


def _runs_within(part: tuple[str, ...], ops: tuple[str, ...]) -> bool:
    """Whether `part` is a contiguous run of `ops`, which hold more that the reader resolved:
    a `Net` read as the copy plus only what the reader could not resolve (`?`) may be the copy
    alone; one read as it plus a resolved op is not."""
    n = len(part)
    more = sum("?" not in op for op in ops) > n
    return more and any(ops[i : i + n] == part for i in range(len(ops) - n + 1))


class CodeNovelty:
    """An archive of code sketches, scoring how new a candidate is against it.

    Parameters
    ----------
    shingle : consecutive tokens per shingle (shorter sources give one shingle of all tokens).
    num_perm : MinHash permutations; the Jaccard estimate's standard error is about
        sqrt(J (1 - J) / num_perm).
    threshold : estimated Jaccard at or above which a candidate is a near duplicate.
    seed : seeds the MinHash permutations; equal seeds give equal scores, run after run.
    twins : a member whose `structure` equals the candidate's counts as Jaccard 1 whatever the
        text: dead code, identity ops or a rewrite cannot make a copy of a network look new.
        False: the text alone, as a plain MinHash–Jaccard filter (Khalid et al.) judges it.
    """

    def __init__(
        self,
        shingle: int = 10,
        num_perm: int = 256,
        threshold: float = 0.90,
        seed: int = 1,
        twins: bool = True,
    ) -> None:
        for name, value, low in (("shingle", shingle, 1), ("num_perm", num_perm, 2)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name}: {value!r} is not an integer >= {low}")
        if not (isinstance(threshold, int | float) and 0 < threshold <= 1):
            raise ValueError(f"threshold: {threshold!r} is not a number in (0, 1]")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed: {seed!r} is not an integer >= 0")
        self.shingle, self.num_perm, self.threshold, self.seed = shingle, num_perm, threshold, seed
        self._blank = MinHash(num_perm=num_perm, seed=seed)
        self._lsh = _lsh(threshold, num_perm)
        self.bands, self.rows = self._lsh.b, self._lsh.r
        self._keys: list[str] = []
        self._keyset: set[str] = set()
        self._rows: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None  # rows stacked, rebuilt after an add
        self.twins = bool(twins)
        self._twins: dict[str, list[str]] = {}  # `structure` -> keys of the members with it

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keyset

    def sketch(self, source: str) -> MinHash:
        """The MinHash of `source`'s shingles; ValueError when it has no code tokens.

        A new MinHash each call, from hash values computed once per process for each source
        and setting while they stay in `_SKETCHES` (the loop sketches a candidate ~6 times)."""
        read = _remembered if isinstance(source, str) else _hash_values  # else: as before
        values = read(self._blank, self.shingle, source)
        if values is None:
            raise ValueError("source has no code tokens")
        m = self._blank.copy()
        m.hashvalues[:] = values
        return m

    def add(self, key: str, source: str) -> None:
        """Put `source` in the archive under `key` (ValueError if the key is taken)."""
        if key in self._keyset:
            raise ValueError(f"key {key!r} is already in the archive")
        m = self.sketch(source)
        self._lsh.insert(key, m)
        self._keys.append(key)
        self._keyset.add(key)
        self._rows.append(np.asarray(m.hashvalues))
        self._matrix = None
        if self.twins and (struct := structure(source)) is not None:
            self._twins.setdefault(struct, []).append(key)

    def similarities(self, source: str) -> dict[str, float]:
        """Estimated Jaccard similarity of `source` to every archive member, by key."""
        return self._similarities(self.sketch(source), source) if self._keys else {}

    def _similarities(self, m: MinHash, source: str) -> dict[str, float]:
        if self._matrix is None:
            self._matrix = np.vstack(self._rows)
        sims = (self._matrix == np.asarray(m.hashvalues)).mean(axis=1)
        out = dict(zip(self._keys, sims.tolist(), strict=True))
        return out | dict.fromkeys(self._same(source), 1.0)

    def _same(self, source: str) -> list[str]:
        """Keys of the members that run the same network as `source` (equal `structure`), or
        as a network `source` holds and `Net` may reach unseen (`held_structures`)."""
        if not self._twins:
            return []
        found = [s for s in (structure(source), *held_structures(source)) if s is not None]
        return sorted({key for struct in found for key in self._twins.get(struct, [])})

    def score(self, source: str) -> float:
        """Novelty: 1 - the largest estimated Jaccard similarity to the archive (1.0 if empty)."""
        sims = self.similarities(source)
        return 1.0 - max(sims.values()) if sims else 1.0

    def near_duplicates(self, source: str) -> list[str]:
        """Keys of archive members whose estimated Jaccard with `source` reaches `threshold`
        (a member with the same `structure` counts as Jaccard 1).

        The LSH index proposes candidates with a banding that proposes every member at or above
        the threshold (`_lsh`); each is then confirmed on the same estimate `score` uses, so
        `source` has a near duplicate exactly when `1 - score(source)` reaches `threshold`.
        """
        if not self._keys:
            return []
        m = self.sketch(source)
        found = set(self._lsh.query(m)) | set(self._same(source))
        sims = self._similarities(m, source) if found else {}
        return sorted(k for k in found if sims[k] >= self.threshold)

    def is_near_duplicate(self, source: str) -> bool:
        """Whether some archive member has estimated Jaccard >= `threshold` with `source`."""
        return bool(self.near_duplicates(source))

    def seed_with_known(self) -> int:
        """Add `to_source(seq)` of every architecture in `archrefine.space.KNOWN` (keys
        "known:<name>"), so "novel" means "unlike anything published", too. Returns how many
        were added; those already present are skipped."""
        try:
            from archrefine.space import KNOWN, to_source
        except ImportError as err:
            raise ImportError(f"seed_with_known needs archrefine.space: {err}") from None
        added = 0
        for name, seq in KNOWN.items():
            if f"known:{name}" not in self._keyset:
                self.add(f"known:{name}", to_source(seq))
                added += 1
        return added


def _lsh(threshold: float, num_perm: int) -> MinHashLSH:
    """An LSH index that proposes every member whose estimated Jaccard reaches `threshold`.

    The estimate is the share of the `num_perm` MinHash values two sketches agree on, so at the
    threshold at most `d` of them differ (`d = num_perm - agree`, `agree` the fewest agreements
    the estimate counts as reaching it, in the estimate's own float arithmetic). With `d + 1`
    bands (rows = num_perm // bands), `d` differing values leave at least one band whole, and a
    whole band is an LSH match: no miss, whatever the sets. datasketch's own choice for 0.90
    and 256 (9 bands x 28 rows, tuned for a balance of false hits and misses over all J) proposes
    a pair at J = 0.90 with probability 1 - (1 - 0.9**28)**9 = 0.38; 26 x 9 proposes from
    about J = (1/26)**(1/9) = 0.70 on, the extra candidates being rejected on their estimate.
    """
    agree = next(k for k in range(num_perm + 1) if k / num_perm >= threshold)
    bands = max(2, num_perm - agree + 1)  # datasketch refuses a single band
    return MinHashLSH(num_perm=num_perm, params=(bands, num_perm // bands))


def _hash_values(blank: MinHash, shingle: int, source: str) -> np.ndarray | None:
    """The MinHash values (read-only) of `source`'s shingles of `shingle` tokens, hashed as
    `blank` hashes; None without code tokens."""
    tokens = code_tokens(source)
    if not tokens:
        return None
    k = min(shingle, len(tokens))
    shingles = {" ".join(tokens[i : i + k]) for i in range(len(tokens) - k + 1)}
    m = blank.copy()
    m.update_batch([s.encode() for s in sorted(shingles)])
    values = np.array(m.hashvalues)
    values.flags.writeable = False  # shared by every later sketch of the same source
    return values


def _setting_key(blank: MinHash, shingle: int, source: str) -> tuple:
    return source_key(source, shingle, len(blank.hashvalues), blank.seed)


_remembered = cached(_SKETCHES, key=_setting_key, lock=threading.Lock())(_hash_values)
