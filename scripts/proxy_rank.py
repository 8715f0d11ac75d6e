"""How well does the real loop's fitness proxy rank architectures? Spearman ρ against 10 epochs.

    nice -n 5 python scripts/proxy_rank.py --out runs/proxy-rank          # ~15 min on 2 cores
    python scripts/proxy_rank.py --quick --out /tmp/proxy-quick           # 3 networks, seconds

The real loop scores a candidate by its held-out digits accuracy after a short training run
(`evaluate.epochs`, `lr`, `batch_size`, `max_train`). That number is only useful if it orders
networks the way longer training does. This script trains KNOWN's networks and `--random`
random valid sequences (seeded, uniform over 15-token sequences, kept when `is_valid`) under
each proxy setting and under a 10-epoch reference on all 1,347 training images, on the loop's
own split (`sandbox.training.digits`: 450 held-out images), and reports Spearman ρ with a
bootstrap interval over networks, ρ over KNOWN alone, and seconds per candidate (one thread).

The networks come from `archrefine.space.build` on the project's own sequences, so they train
in plain worker processes with `sandbox.training.train_one`; model-written code never runs
here. Every (setting, network) result is kept under `--out` (`results*.parquet`, one file per
run of the script, so two runs may share a directory): a rerun trains only what is missing.
`rank.json` holds the numbers docs/fitness-proxy.md quotes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from archrefine.core.store import write_json, write_parquet
from archrefine.real.config import EvaluateConfig
from archrefine.sandbox.training import TrainSettings, cost, digits, train_one
from archrefine.space import KNOWN, LENGTH, VOCAB, SpaceSpec, canonical, is_valid

Tokens = tuple[int, ...]
ALL = 0  # max_train 0: every training image, as in EvaluateConfig


@dataclass(frozen=True)
class Proxy:
    """One training recipe: what an accuracy depends on besides the network and the seed."""

    name: str
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    max_train: int = ALL
    size: int = 32

    def settings(self, seed: int) -> TrainSettings:
        spec = SpaceSpec(size=self.size)
        return TrainSettings(
            spec, seed, self.epochs, self.batch_size, self.lr, self.max_train or None
        )

    def key(self) -> str:
        """The recipe without its name: results are shared by recipes that train alike."""
        doc = asdict(self)
        del doc["name"]
        return json.dumps(doc, sort_keys=True)


OLD = Proxy("old default", epochs=1, lr=1e-3, batch_size=32, max_train=ALL)
"""EvaluateConfig's defaults before this study (first-epoch Adam at 1e-3, minibatch 32)."""
REFERENCE = Proxy("reference", epochs=10, lr=1e-3, batch_size=32, max_train=ALL)
"""The target ranking: the old recipe trained for 10 epochs on every training image."""


def current() -> Proxy:
    """The proxy the real loop uses now: EvaluateConfig's defaults."""
    ev = EvaluateConfig()
    size = getattr(ev, "resolution", 32)
    return Proxy("default", ev.epochs, ev.lr, ev.batch_size, ev.max_train, size)


def parse_proxy(text: str) -> Proxy:
    """`name:epochs=2,lr=3e-3,batch=16,train=600,size=32` (omitted fields: the old default)."""
    name, _, rest = text.partition(":")
    names = {"epochs": "epochs", "lr": "lr", "batch": "batch_size", "train": "max_train"}
    names["size"] = "size"
    fields: dict[str, Any] = {}
    for part in filter(None, rest.split(",")):
        key, _, value = part.partition("=")
        if key not in names:
            raise ValueError(f"--proxy {text!r}: {key!r} is not one of {', '.join(names)}")
        try:
            fields[names[key]] = float(value) if key == "lr" else int(value)
        except ValueError:
            raise ValueError(f"--proxy {text!r}: {key}={value!r} is not a number") from None
    if not name:
        raise ValueError(f"--proxy {text!r}: give it a name before ':'")
    proxy = Proxy(**{**asdict(OLD), **fields, "name": name})
    proxy.settings(0)  # validates epochs, lr, batch and max_train in one line
    return proxy


def random_valid(n: int, seed: int, exclude: set[Tokens] = frozenset()) -> list[Tokens]:
    """`n` distinct canonical networks drawn uniformly among 15-token sequences (no-ops
    included) and kept when `is_valid` accepts them; `exclude` (e.g. KNOWN) is skipped."""
    rng = np.random.default_rng(seed)
    out: dict[Tokens, None] = {}
    while len(out) < n:
        seqs = rng.integers(0, len(VOCAB), (50_000, LENGTH))
        for row in seqs[is_valid(seqs)]:
            key = canonical(row)
            if key not in exclude and key not in out:
                out[key] = None
                if len(out) == n:
                    break
    return list(out)


def networks(n_random: int, seed: int) -> dict[str, Tokens]:
    """KNOWN's networks by name, then `random-00`, `random-01`, … ."""
    known = {name: canonical(seq) for name, seq in KNOWN.items()}
    drawn = random_valid(n_random, seed, set(known.values()))
    return known | {f"random-{i:02d}": t for i, t in enumerate(drawn)}


def spearman(
    proxy: np.ndarray,
    reference: np.ndarray,
    *,
    draws: int = 1000,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Spearman ρ of two score vectors and its percentile bootstrap interval over networks
    (resamples in which one side is constant are dropped: ρ is undefined there)."""
    from scipy.stats import rankdata, spearmanr

    x, y = np.asarray(proxy, float), np.asarray(reference, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"need two equal-length score vectors of >= 3 networks, got {x.shape}")
    rho = float(spearmanr(x, y).statistic)
    idx = np.random.default_rng(seed).integers(0, len(x), (draws, len(x)))
    rx, ry = rankdata(x[idx], axis=1), rankdata(y[idx], axis=1)  # ties: average ranks
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    norm = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    ok = norm > 0
    boot = (rx * ry).sum(1)[ok] / norm[ok]  # Pearson r of the ranks = Spearman ρ, per resample
    if not len(boot):
        return rho, float("nan"), float("nan")
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return rho, float(lo), float(hi)


# ---- training, in worker processes -------------------------------------------------------------

_DATA: dict[str, Any] = {}


def _init() -> None:
    import torch

    torch.set_num_threads(1)  # as in the sandbox: one thread per candidate


def _train(key: str, seed: int, tokens: Tokens) -> tuple[float, float]:
    """(held-out accuracy, seconds) of one network under one recipe; NaN when the network does
    not exist at the recipe's resolution."""
    proxy = Proxy("", **json.loads(key))
    settings = proxy.settings(seed)
    if not is_valid(np.array([tokens + (0,) * (LENGTH - len(tokens))]), settings.spec)[0]:
        return float("nan"), 0.0
    data_key = json.dumps([proxy.max_train, proxy.size, seed])
    if data_key not in _DATA:
        _DATA[data_key] = digits(settings)
    start = time.perf_counter()
    accuracy = train_one(tokens, settings, _DATA[data_key])
    return accuracy, time.perf_counter() - start


def measure(
    proxies: list[Proxy],
    nets: dict[str, Tokens],
    out: Path,
    *,
    seed: int,
    workers: int,
    train: set[str] | None = None,
    cheapest: bool = False,
) -> pd.DataFrame:
    """Every (recipe, network) accuracy and time, from `out/results*.parquet` where present;
    the rest trained in `workers` processes, this run's own file rewritten (atomically) as
    each finishes, so an interrupted run keeps what it trained. `train` (recipe names) limits
    what this call trains, e.g. while another run of the script trains the rest; `cheapest`
    trains network by network, cheapest first (see `--cheapest-first`)."""
    cols = ["key", "seed", "tokens", "accuracy", "seconds"]
    done = _read(out, cols)
    have = set(zip(done.key, done.seed, done.tokens, strict=True))
    path = out / f"results-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.parquet"
    keys = list(dict.fromkeys(p.key() for p in proxies if train is None or p.name in train))
    todo = [(k, t) for k in keys for t in set(nets.values()) if (k, seed, _text(t)) not in have]
    # longest first, so no slow job finishes alone at the end; or, for a run that may be cut
    # short, cheapest network first, all its recipes together, so most networks are complete
    todo.sort(key=lambda kt: (cost(kt[1]), kt[1], -_work(*kt)) if cheapest else -_work(*kt))
    rows: list[dict[str, Any]] = []

    def keep(k: str, t: Tokens, acc: float, sec: float) -> None:
        rows.append(dict(key=k, seed=seed, tokens=_text(t), accuracy=acc, seconds=sec))
        write_parquet(path, pd.DataFrame(rows, columns=cols))

    if todo:
        print(f"training {len(todo)} (recipe, network) pairs in {workers} workers", flush=True)
    if todo and workers == 1:  # in this process, on one thread, as a worker would
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for k, t in todo:
                keep(k, t, *_train(k, seed, t))
        finally:
            torch.set_num_threads(threads)
    elif todo:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init) as pool:
            futures = {pool.submit(_train, k, seed, t): (k, t) for k, t in todo}
            for n, fut in enumerate(as_completed(futures), 1):
                keep(*futures[fut], *fut.result())
                if n % 10 == 0 or n == len(todo):
                    print(f"  {n}/{len(todo)}", flush=True)
    return _read(out, cols)


def _text(tokens: Tokens) -> str:
    return " ".join(map(str, tokens))


def _work(key: str, tokens: Tokens) -> float:
    """Rough cost of training `tokens` under the recipe `key` (multiply-adds × images)."""
    recipe = json.loads(key)
    images = recipe["max_train"] or 1347
    return cost(tokens) * recipe["epochs"] * images * (recipe["size"] / 32) ** 2


def _read(out: Path, cols: list[str]) -> pd.DataFrame:
    """Every result file under `out`, one row per (recipe, seed, network): the first kept."""
    frames = [pd.read_parquet(f) for f in sorted(out.glob("results*.parquet"))]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True).drop_duplicates(["key", "seed", "tokens"])


def summarise(
    proxies: list[Proxy], nets: dict[str, Tokens], results: pd.DataFrame, seed: int
) -> dict[str, Any]:
    """Per recipe: ρ against the last recipe (the reference) over all networks and over KNOWN
    alone, with intervals, and seconds per candidate; plus every network's accuracies."""
    res = results[results.seed == seed]
    table = {
        (k, tuple(int(v) for v in t.split())): (a, s)
        for k, t, a, s in zip(res.key, res.tokens, res.accuracy, res.seconds, strict=True)
    }

    def scores(p: Proxy) -> tuple[np.ndarray, np.ndarray]:
        got = [table[(p.key(), t)] for t in nets.values()]
        acc = np.array([a for a, _ in got])
        return np.nan_to_num(acc, nan=0.0), np.array([s for _, s in got])  # no net: scores 0

    ref, _ = scores(proxies[-1])
    known = np.array([name in KNOWN for name in nets])
    out: dict[str, Any] = {"seed": seed, "networks": len(nets), "known": int(known.sum())}
    out["proxies"] = []
    for p in proxies:
        acc, sec = scores(p)
        rho, lo, hi = spearman(acc, ref, seed=seed)
        rho_known = spearman(acc[known], ref[known], seed=seed)
        out["proxies"].append(
            asdict(p)
            | dict(
                rho=rho,
                rho_lo=lo,
                rho_hi=hi,
                rho_known=rho_known[0],
                rho_known_lo=rho_known[1],
                rho_known_hi=rho_known[2],
                mean_accuracy=float(acc.mean()),
                known_accuracy=[float(acc[known].min()), float(acc[known].max())],
                seconds_mean=float(sec.mean()),
                seconds_max=float(sec.max()),
                seconds_total=float(sec.sum()),
            )
        )
    out["accuracy"] = {
        name: {p.name: float(scores(p)[0][i]) for p in proxies} for i, name in enumerate(nets)
    }
    return out


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| proxy | epochs | lr | batch | train images | size | ρ (90% CI) | ρ KNOWN (90% CI) "
        "| s/candidate mean | max |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in summary["proxies"]:
        images = p["max_train"] or 1347
        lines.append(
            f"| {p['name']} | {p['epochs']} | {p['lr']:g} | {p['batch_size']} | {images} "
            f"| {p['size']} | {p['rho']:.2f} ({p['rho_lo']:.2f}, {p['rho_hi']:.2f}) "
            f"| {p['rho_known']:.2f} ({p['rho_known_lo']:.2f}, {p['rho_known_hi']:.2f}) "
            f"| {p['seconds_mean']:.2f} | {p['seconds_max']:.2f} |"
        )
    return "\n".join(lines)


def per_network(summary: dict[str, Any]) -> str:
    """Each network's accuracy under each recipe, as a Markdown table."""
    names = [p["name"] for p in summary["proxies"]]
    lines = ["| network | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for net, acc in summary["accuracy"].items():
        lines.append(f"| {net} | " + " | ".join(f"{acc[n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/proxy-rank"))
    ap.add_argument("--random", type=int, default=50, help="random valid networks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--proxy",
        action="append",
        default=[],
        metavar="NAME:k=v,…",
        help="extra recipe, e.g. fast:epochs=2,lr=3e-3,batch=16,train=600,size=32",
    )
    ap.add_argument(
        "--networks",
        default="",
        metavar="NAME,…",
        help="only these of KNOWN's and the random networks (e.g. nin,random-03)",
    )
    ap.add_argument(
        "--only",
        action="store_true",
        help="train only the --proxy recipes (another run trains the rest)",
    )
    ap.add_argument(
        "--partial", action="store_true", help="report on the networks done so far (train nothing)"
    )
    ap.add_argument(
        "--cheapest-first",
        action="store_true",
        help="train network by network, cheapest first (most networks done if cut short)",
    )
    ap.add_argument("--report", default="rank", help="write OUT/REPORT.json (default rank)")
    ap.add_argument("--quick", action="store_true", help="3 networks, tiny recipes (a test)")
    args = ap.parse_args(argv)
    try:
        if args.random < 0 or not 1 <= args.workers <= 2:
            raise ValueError("--random must be >= 0 and --workers 1 or 2 (a shared machine)")
        extra = [parse_proxy(t) for t in args.proxy]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.quick:  # the same pipeline on 3 cheap networks and small recipes
        nets = {n: canonical(KNOWN[n]) for n in ("mlp", "dropout_mlp", "convnext")}
        proxies = [Proxy("old default", max_train=100), *extra]
        proxies.append(Proxy("reference", epochs=3, max_train=200))
    else:
        nets = networks(args.random, args.seed)
        if args.networks:
            names = args.networks.split(",")
            if unknown := [n for n in names if n not in nets]:
                known = f"KNOWN's names or random-00 … random-{len(nets) - len(KNOWN) - 1:02d}"
                print(f"error: --networks: {unknown[0]!r} is not one of {known}", file=sys.stderr)
                return 2
            nets = {n: nets[n] for n in names}
        proxies = [OLD, current(), *extra]
        proxies.append(REFERENCE)
    args.out.mkdir(parents=True, exist_ok=True)
    only = {p.name for p in extra} if args.only else None
    if args.partial:
        only = set()
    results = measure(
        proxies,
        nets,
        args.out,
        seed=args.seed,
        workers=args.workers,
        train=only,
        cheapest=args.cheapest_first,
    )
    have = set(zip(results.key, results.seed, results.tokens, strict=True))
    need = {(p.key(), args.seed, _text(t)) for p in proxies for t in nets.values()}
    if (missing := len(need - have)) and not args.partial:
        print(f"{missing} results still missing (another run is training them); rerun to see ρ")
        return 0
    if missing:  # --partial: only the networks every recipe has finished
        nets = {
            n: t
            for n, t in nets.items()
            if all((p.key(), args.seed, _text(t)) in have for p in proxies)
        }
        print(f"--partial: {missing} results missing; ρ over the {len(nets)} networks done")
        if len(nets) < 3:
            return 0
    summary = summarise(proxies, nets, results, args.seed)
    summary["load"] = os.getloadavg()[0]
    summary["missing_results"] = missing  # 0: every network of the study is in the numbers
    report = args.out / f"{args.report}.json"
    write_json(report, summary)
    print(markdown(summary))
    if len(nets) <= 20:
        print(per_network(summary))
    print(f"load average {summary['load']:.2f}; written {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
