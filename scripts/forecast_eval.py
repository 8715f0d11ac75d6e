"""Held-out evaluation of `archrefine forecast`, and its development runs: docs/forecast.md.

    python scripts/forecast_eval.py --develop --out runs/forecast-dev --docs docs/forecast.md
    python scripts/forecast_eval.py --out runs/forecast-eval [--loop runs/loop-learned] \
        [--docs docs/forecast.md]

The split. *Development* (`--develop`): `DEV_RUNS` runs of the paper model in the abstract
space, seeds from 200, each with generator parameters drawn from a normal twice as wide as the
forecast's own prior, the four schedules and k = 5, 10, 20 in rotation, population 30, 50 or 80
(experiments/forecast_conformal.py; draws whose run never becomes valid are skipped). Each is
forecast with the raw band; how far the truth lay outside it, per column over the forecast
cycles, gives the split-conformal widening factors written to
src/archrefine/data/forecast_conformal.json (`_fitN.json` with `--fit-cycles N` other than
6: a forecast reads those of the nearest measured length) — the only thing tuned — and each
factor is cross-validated by leaving one development run out. *Evaluation* (the default):
`RUNS`, which nothing was tuned on — other seeds (11–21), the three other schedules, k = 2
and 30, the grounded space, two parameter settings away from the defaults, the learned
generator, and with
`--loop` a real loop's directory — each forecast from its first `--fit-cycles` cycles exactly as
`archrefine forecast RUN` does (generator `auto`), and compared with what the run went on to do:
final validity and diversity kept (final ÷ first-cycle diversity), errors in percentage points,
whether the 80% band held the truth. Writes eval.json and eval.md under --out (each run's
forecast.json/png in its folder); with --docs, replaces the table between
`<!-- forecast-eval:start -->` and `<!-- forecast-eval:end -->` (`forecast-dev:` markers for
--develop; `forecast-dev-fitN:` and `forecast-eval-fitN:` with `--fit-cycles N` other than
6). On a busy machine split the work and combine: `--only 0 1 2 --tag _a` (and so on, in
parallel), then `--rows-from runs/forecast-eval/eval_*.json --docs docs/forecast.md`. Forecasting
the evaluation runs from more cycles (`--fit-cycles 10 --out runs/forecast-eval-fit10`), then
`--compare 6=runs/forecast-eval 10=runs/forecast-eval-fit10` tabulates each run's errors side by
side (`--docs`: between the `forecast-cycles:` markers).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from archrefine.core.store import atomic_write_text, write_json
from archrefine.experiments import forecast as fc
from archrefine.experiments import forecast_fit, forecast_io
from archrefine.experiments.forecast_conformal import (
    DEV_SPREAD,
    dev_draw,
    dev_runs,
    leave_one_run_out,
)
from archrefine.experiments.forecast_fit import PRIOR_SD, box, prior_centre

DEV_RUNS = 20

#: the evaluation runs: nothing was tuned on them (the development runs: `dev_runs`)
RUNS: list[tuple[str, list[str]]] = [
    ("default, seed 11", ["seed=11"]),
    ("default, seed 12", ["seed=12"]),
    ("schedule cosine", ["seed=13", "schedule.kind=cosine"]),
    ("schedule cyclic", ["seed=14", "schedule.kind=cyclic"]),
    ("schedule linear", ["seed=15", "schedule.kind=linear"]),
    ("k = 2", ["seed=16", "loop.top_k=2"]),
    ("k = 30", ["seed=17", "loop.top_k=30"]),
    ("space grounded", ["seed=18", "space.kind=grounded"]),
    ("slower learning (bonus_max 4, prior_rate 0.3)",
     ["seed=19", "generator.bonus_max=4", "generator.prior_rate=0.3"]),  # fmt: skip
    ("Khalid-fitted parameters (docs/calibration.md)",
     ["seed=20", "generator.base_logit=2.77", "generator.bonus_max=1.57",
      "generator.bonus_rate=0.021", "generator.familiarity=0.29", "generator.prior_rate=0.24"]),
    ("learned generator (grounded, 4 trials)",
     ["seed=21", "generator.kind=learned", "space.kind=grounded", "trials=4"]),
]  # fmt: skip


def make_run(out: Path, sets: list[str]) -> None:
    if (out / "run.json").exists() and json.loads((out / "run.json").read_text()).get(
        "status"
    ) == "complete":
        return
    cmd = ["archrefine", "run", "--out", str(out), "--force"]
    for s in sets:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def evaluate(name: str, run: Path, fit_cycles: int, out: Path, develop: bool = False) -> dict:
    """Forecast one run (development: the raw band, and its conformal scores per column)."""
    obs = forecast_io.load_observed(run)
    started, cpu = time.time(), time.process_time()
    result = fc.forecast(
        obs,
        fit_cycles=fit_cycles,
        generators=["paper"] if develop else fc.generators_for(obs, "auto"),
        conformal={} if develop else None,
    )
    seconds, cpu = time.time() - started, time.process_time() - cpu
    out.mkdir(parents=True, exist_ok=True)
    forecast_io.write_forecast(out, result)
    s, t = result.summary, result.table
    later = t[~t["fitted"]]
    cols = [c for c in [*forecast_io.METRICS, *fc.MAPPED] if f"observed_{c}" in t and c in t]

    def covered(col: str) -> float:
        seen = later[f"observed_{col}"]
        ok = (seen >= later[f"{col}_lo"]) & (seen <= later[f"{col}_hi"])
        return float(ok[seen.notna()].mean())

    def inside(key: str) -> bool:
        return bool(s[f"{key}_lo"] <= s[f"observed_{key}"] <= s[f"{key}_hi"])

    row = {
        "run": name,
        "dir": str(run),
        "generator": result.generator,
        "heldout_error": result.heldout,
        "params": result.calibration.params,
        "conformal": result.info["conformal"],
        "final_validity": s["final_validity"],
        "final_validity_band": [s["final_validity_lo"], s["final_validity_hi"]],
        "observed_final_validity": s["observed_final_validity"],
        "validity_error_pp": 100 * (s["final_validity"] - s["observed_final_validity"]),
        "validity_inside": inside("final_validity"),
        "diversity_kept": s["diversity_kept"],
        "diversity_kept_band": [s["diversity_kept_lo"], s["diversity_kept_hi"]],
        "observed_diversity_kept": s["observed_diversity_kept"],
        "kept_error_pp": 100 * (s["diversity_kept"] - s["observed_diversity_kept"]),
        "kept_inside": inside("diversity_kept"),
        "fit_validity_error_pp": 100
        * (result.info["fit_final_validity"] - s["observed_final_validity"]),
        "validity_band_coverage": covered("validity"),
        "diversity_band_coverage": covered("diversity") if "observed_diversity" in t else None,
        "seconds": seconds,
        "cpu_seconds": cpu,
    }
    if develop:  # the raw band per cycle, so other calibrations can be judged without refitting
        row["raw"] = {
            c: {k: later[f"{c}{k}"].tolist() for k in ("", "_lo", "_hi")}
            | {"observed": later[f"observed_{c}"].tolist()}
            for c in cols
        }
        row["fit_loss"] = {
            "loss": result.calibration.info.get("loss"),
            "residuals": len(result.calibration.residuals),
        }
        row["kept_score"] = float(
            fc.conformal_scores(
                s["diversity_kept"], s["diversity_kept_lo"], s["diversity_kept_hi"],
                s["observed_diversity_kept"],
            )
        )  # fmt: skip
        row["scores"] = {
            c: fc.conformal_scores(
                later[c], later[f"{c}_lo"], later[f"{c}_hi"], later[f"observed_{c}"]
            ).tolist()
            for c in cols
        }
    return with_noise(row)


def with_noise(row: dict) -> dict:
    """`row` with its run's own standard errors (`forecast_io.hindcast_noise`), read from the
    run's directory where an older eval.json lacks them."""
    if "observed_validity_se" not in row:
        noise = forecast_io.hindcast_noise(row["dir"])
        row["observed_validity_se"] = noise["final_validity"]
        row["observed_kept_se"] = noise["diversity_kept"]
        row["noise_method"] = noise["method"]
    return row


NULLABLE = ("final_validity", "observed_final_validity", "observed_validity_se",
            "validity_error_pp", "diversity_kept", "observed_diversity_kept", "observed_kept_se",
            "kept_error_pp", "validity_band_coverage", "fit_validity_error_pp")  # fmt: skip
"""A row's numbers that eval.json (strict JSON) holds as null where they were not finite."""


def nan_for_null(row: dict) -> dict:
    """`row` with NULLABLE's nulls (and its bands') as NaN, so sums and means still work."""
    out = {**row, **{k: math.nan for k in NULLABLE if k in row and row[k] is None}}
    for key in ("final_validity_band", "diversity_kept_band"):
        if key in row:
            out[key] = [math.nan if b is None else b for b in row[key]]
    return out


def num(value: float | None, spec: str) -> str:
    """`value` formatted; "–" where it is null or not finite (nothing was measured)."""
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


def table(rows: list[dict], fit_cycles: int, command: str, develop: bool = False) -> str:
    rows = [nan_for_null(with_noise(r)) for r in rows]

    def band(b: list[float]) -> str:
        return "–" if not all(map(math.isfinite, b)) else f"{b[0]:.2f}–{b[1]:.2f}"

    def mark(ok: bool) -> str:
        return "yes" if ok else "**no**"

    kind = "raw 80% bands (before the conformal widening)" if develop else "80% bands"
    lines = [
        f"From `{command}` (fit cycles 1–{fit_cycles}, generator "
        f"{'`paper`' if develop else '`auto`'}, {kind}):",
        "",
        "| run | generator | final validity: forecast (80%) | observed (± its SE) | error (pp) "
        "| in band | diversity kept: forecast (80%) | observed (± its SE) | error (pp) | in band "
        "| band held the truth, cycles after the fit: validity / diversity |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        div_cov = r["diversity_band_coverage"]
        lines.append(
            f"| {r['run']} | {r['generator']} | {num(r['final_validity'], '.3f')} "
            f"({band(r['final_validity_band'])}) | {num(r['observed_final_validity'], '.3f')} "
            f"± {num(r['observed_validity_se'], '.3f')} | {num(r['validity_error_pp'], '+.1f')} "
            f"| {mark(r['validity_inside'])} | {num(r['diversity_kept'], '.3f')} "
            f"({band(r['diversity_kept_band'])}) | {num(r['observed_diversity_kept'], '.3f')} "
            f"± {num(r['observed_kept_se'], '.3f')} | {num(r['kept_error_pp'], '+.1f')} "
            f"| {mark(r['kept_inside'])} | {num(r['validity_band_coverage'], '.0%')} / "
            + ("–" if div_cov is None else f"{div_cov:.0%}")
            + " |"
        )
    v_ok = sum(abs(r["validity_error_pp"]) <= 5 for r in rows)
    k_ok = sum(abs(r["kept_error_pp"]) <= 3 for r in rows)
    inside_v = sum(r["validity_inside"] for r in rows)
    inside_k = sum(r["kept_inside"] for r in rows)
    mae_v = np.mean([abs(r["validity_error_pp"]) for r in rows])
    mae_k = np.mean([abs(r["kept_error_pp"]) for r in rows])
    cov_v = np.mean([r["validity_band_coverage"] for r in rows])
    cov_d = [r["diversity_band_coverage"] for r in rows if r["diversity_band_coverage"] is not None]
    lines += [
        "",
        f"Goals met: final validity within ±5 pp on {v_ok} of {len(rows)} runs (mean absolute "
        f"error {mae_v:.1f} pp); diversity kept within ±3 pp on {k_ok} of {len(rows)} (mean "
        f"absolute error {mae_k:.1f} pp). The 80% band held the observed final validity on "
        f"{inside_v} of {len(rows)} runs and the observed diversity kept on {inside_k}; over the "
        f"forecast cycles it held validity {cov_v:.0%} of the time and diversity "
        f"{np.mean(cov_d):.0%}.",
        noise_line(rows),
    ]
    if develop:  # which point: the posterior predictive mean, or the MAP fit's own simulation
        mae_fit = np.mean([abs(r["fit_validity_error_pp"]) for r in rows])
        lines.append(
            f"Final validity's mean absolute error: {mae_v:.1f} pp for the forecast (the mean "
            f"over the parameter sets), {mae_fit:.1f} pp for the MAP fit's own simulation."
        )
    for label, keep in (("paper only", False), ("paper and learned", True)):
        cpu = [r["cpu_seconds"] for r in rows if bool(r["heldout_error"]) == keep]
        if cpu:
            lines.append(
                f"CPU time per forecast, {label}: median {np.median(cpu):.0f} s "
                f"(max {max(cpu):.0f} s, {len(cpu)} runs; one process)."
            )
    return "\n".join(lines)


def noise_line(rows: list[dict]) -> str:
    """How the errors compare with each run's own noise (its standard error: trials resampled,
    or one trial's scatter about its trend): where that is at least half the goal's tolerance, an
    exact forecast would often miss the goal; an error beyond twice it is the forecast's."""
    loud = [r["run"] for r in rows if 200 * r["observed_validity_se"] >= 5
            or 200 * r["observed_kept_se"] >= 3]  # fmt: skip
    v_far = sum(abs(r["validity_error_pp"]) > 200 * r["observed_validity_se"] for r in rows)
    k_far = sum(abs(r["kept_error_pp"]) > 200 * r["observed_kept_se"] for r in rows)
    return (
        "Each run's own noise (the observed value's standard error: its trials resampled; one "
        "trial: the scatter of its cycles about their trend) is at least half the goal's "
        "tolerance (2.5 pp of validity or 1.5 pp of diversity kept) on "
        + (f"{len(loud)} of {len(rows)} ({'; '.join(loud)}): there even an exact forecast would "
           "often miss the goal" if loud else "none")
        + f". Errors beyond twice the run's standard error: final validity {v_far} of "
        f"{len(rows)}, diversity kept {k_far} of {len(rows)}."
    )  # fmt: skip


def compare_table(sets: list[str]) -> str:
    """Errors of the same evaluation forecast from different numbers of fitted cycles: `sets`
    are `N=DIR` (DIR/eval.json made with `--fit-cycles N`)."""
    found = {}
    for item in sets:
        n, _, where = item.partition("=")
        rows = json.loads((Path(where) / "eval.json").read_text())
        found[int(n)] = {r["run"]: nan_for_null(r) for r in rows}
    ns = sorted(found)
    names = [r for r in found[ns[0]] if all(r in found[n] for n in ns)]
    cols = " / ".join(str(n) for n in ns)
    lines = [
        f"| run | final validity error (pp), fitting {cols} cycles | diversity kept error (pp) |",
        "|---|---|---|",
    ]
    for name in names:
        v = " / ".join(num(found[n][name]["validity_error_pp"], "+.1f") for n in ns)
        k = " / ".join(num(found[n][name]["kept_error_pp"], "+.1f") for n in ns)
        lines.append(f"| {name} | {v} | {k} |")

    def goal(n: int, key: str, within: float) -> str:
        errs = np.array([found[n][name][key] for name in names])
        return f"{int((np.abs(errs) <= within).sum())} ({np.abs(errs).mean():.1f})"

    lines.append(
        f"| within ±5 pp / ±3 pp of {len(names)} runs (mean absolute error) | "
        + " / ".join(goal(n, "validity_error_pp", 5) for n in ns)
        + " | "
        + " / ".join(goal(n, "kept_error_pp", 3) for n in ns)
        + " |"
    )
    return "\n".join(lines)


def raw_band(raw: dict) -> tuple[np.ndarray, ...]:
    """A development row's raw band over its forecast cycles: point, lo, hi, observed."""
    return tuple(np.asarray(raw[k], dtype=float) for k in ("", "_lo", "_hi", "observed"))


def beyond_two_widths(n: int = 20000) -> dict[str, float]:
    """Per parameter, the share of development draws more than 2 prior widths from the centre
    (the prior itself: 4.6%, less what the box clips)."""
    keys = box("paper")[0]
    u = dev_draw(np.random.default_rng(0), n)
    far = np.abs(u - prior_centre("paper")) > 2 * PRIOR_SD
    return {k.split(".")[1]: float(f) for k, f in zip(keys, far.mean(axis=0))}


def conformal(rows: list[dict], fit_cycles: int, command: str) -> dict:
    """The widening factor per column from the development runs' scores (all forecast cycles
    of every run pooled), and how they were made."""
    cols = sorted({c for r in rows for c in r["scores"]})
    scores = {c: np.concatenate([r["scores"][c] for r in rows if c in r["scores"]]) for c in cols}
    scores["diversity_kept"] = np.array([r["kept_score"] for r in rows])
    bands = {c: [raw_band(r["raw"][c]) for r in rows] for c in cols}
    bands["diversity_kept"] = [
        tuple(np.array([x]) for x in (r["diversity_kept"], *r["diversity_kept_band"],
                                      r["observed_diversity_kept"]))
        for r in rows
    ]  # fmt: skip
    # the alternative judged here, not adopted unless it does better: scores normalized by the
    # fit's loss per residual (≥ 1), so the band would widen where the fit is unsure
    unsure = [np.sqrt(max(1.0, r["fit_loss"]["loss"] / r["fit_loss"]["residuals"])) for r in rows]
    cv = {c: leave_one_run_out(b, fc.LEVEL) for c, b in bands.items()}
    cv_unsure = {c: leave_one_run_out(b, fc.LEVEL, unsure) for c, b in bands.items()}
    return {
        "level": fc.LEVEL,
        "factor": {c: fc.conformal_factor(scores[c], fc.LEVEL) for c in scores},
        "scores": {c: int(np.isfinite(scores[c]).sum()) for c in scores},
        "cross_validated": cv,
        "cross_validated_loss_normalized": cv_unsure,
        "fit_cycles": fit_cycles,
        "prior_sd": PRIOR_SD,
        "dev_spread": DEV_SPREAD,
        "beyond_two_prior_widths": beyond_two_widths(),
        "runs": [r["run"] for r in rows],
        "command": command,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="runs/forecast-eval (-dev)")
    ap.add_argument("--fit-cycles", type=int, default=6)
    ap.add_argument(
        "--develop",
        action="store_true",
        help="the development runs: write the conformal factors (data/forecast_conformal.json)",
    )
    ap.add_argument("--loop", type=Path, help="also a finished `archrefine loop` directory")
    ap.add_argument("--docs", type=Path, help="replace the table in this Markdown file")
    ap.add_argument("--only", type=int, nargs="*", help="indices into the runs (split the work)")
    ap.add_argument("--tag", default="", help="suffix of eval.json/eval.md (split work)")
    ap.add_argument("--rows-from", type=Path, nargs="*", help="eval*.json to combine, no runs")
    ap.add_argument("--compare", nargs="+", metavar="N=DIR",
                    help="tabulate DIR/eval.json of --fit-cycles N, for several N")  # fmt: skip
    ap.add_argument("--prior-sd", type=float, metavar="SD",
                    help="an experiment: the fit's prior this wide (a fraction of each range; "
                    f"default {forecast_fit.PRIOR_SD}); needs --out; writes no conformal "
                    "factors")  # fmt: skip
    args = ap.parse_args()
    if args.prior_sd is not None:
        if args.out is None or not args.prior_sd > 0:
            ap.error("--prior-sd needs a positive width and its own --out")
        forecast_fit.PRIOR_SD = args.prior_sd  # read by the fit at call time; draws keep theirs
    if args.compare:
        text = compare_table(args.compare)
        print(text)
        if args.docs is not None:
            replace_marked(args.docs, "forecast-cycles", text)
        return
    runs, prefix = (dev_runs(DEV_RUNS), "dev") if args.develop else (RUNS, "run")
    args.out = args.out or Path("runs/forecast-dev" if args.develop else "runs/forecast-eval")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for part in args.rows_from or []:
        rows += json.loads(part.read_text())
    chosen = [] if args.rows_from else (args.only if args.only is not None else range(len(runs)))
    for i in chosen:
        name, sets = runs[i]
        tag = sets[0].removeprefix("seed=") if args.develop else f"{i:02d}"
        run = args.out / f"{prefix}{tag}"
        make_run(run, sets)
        out = args.out / f"forecast{tag}"
        rows.append(evaluate(name, run, args.fit_cycles, out, develop=args.develop))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "scores"}), file=sys.stderr)
    if args.loop is not None and not args.rows_from and not args.develop:
        name = f"real loop ({args.loop.name})"
        rows.append(evaluate(name, args.loop, args.fit_cycles, args.out / "forecast-loop"))
    rows.sort(key=lambda r: r["dir"])  # the runs' order, then the loop
    command = "python scripts/forecast_eval.py " + " ".join(sys.argv[1:])
    if args.rows_from:  # parts run in parallel (--only … --tag …), then combined
        command = "python scripts/forecast_eval.py " + (
            "--develop" if args.develop else "--out runs/forecast-eval --loop runs/loop-learned"
        )
        if args.prior_sd is not None:
            command += f" --prior-sd {args.prior_sd} --out {args.out}"
    text = table(rows, args.fit_cycles, command, develop=args.develop)
    if args.develop and len(rows) == len(runs) and args.prior_sd is None:  # the factors
        factors = conformal(rows, args.fit_cycles, command)
        write_json(Path(str(fc.conformal_path(args.fit_cycles))), factors)
        per_cycle = max(factors["scores"].values())
        text += "\n\nConformal widening factors (written to src/archrefine/data/" + (
            f"{fc.conformal_path(args.fit_cycles).name}): "
            + ", ".join(f"{c} {q:.2f}" for c, q in factors["factor"].items())
            + f" (from {per_cycle} scores per column: every forecast cycle of every development "
            "run; diversity kept: "
            f"one score per run, {factors['scores']['diversity_kept']}). Leaving one development "
            "run out (its raw band widened by the factor from the others' scores), the band held "
            + "; ".join(
                f"{c} {v['cycles']:.0%} of the time, the final cycle on {v['final']:.0%} of runs"
                for c, v in factors["cross_validated"].items()
                if c != "diversity_kept"
            )
            + f"; diversity kept on {factors['cross_validated']['diversity_kept']['final']:.0%}. "
            "Development draws beyond 2 prior widths from the defaults: "
            + ", ".join(f"{k} {v:.0%}" for k, v in factors["beyond_two_prior_widths"].items())
            + ". "
            "Scores normalized by the fit's loss per residual (the band widening where the fit is "
            "unsure; not used), judged the same way: mean widened width of "
            + ", ".join(
                f"{c} {factors['cross_validated'][c]['width']:.4f} plain against "
                f"{v['width']:.4f} normalized (held {factors['cross_validated'][c]['cycles']:.0%} "
                f"against {v['cycles']:.0%})"
                for c, v in factors["cross_validated_loss_normalized"].items()
                if c in ("validity", "diversity")
            )
            + "."
        )
    write_json(args.out / f"eval{args.tag}.json", rows)
    atomic_write_text(args.out / f"eval{args.tag}.md", text + "\n")
    print(text)
    if args.docs is not None:
        marker = "forecast-dev" if args.develop else "forecast-eval"
        if args.fit_cycles != fc.DEFAULT_FIT_CYCLES:
            marker += f"-fit{args.fit_cycles}"
        replace_marked(args.docs, marker, text)


def replace_marked(doc: Path, marker: str, text: str) -> None:
    """Replace what lies between `<!-- marker:start -->` and `<!-- marker:end -->` in `doc`."""
    pattern = rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)"
    new = re.sub(pattern, lambda m: m.group(1) + text + "\n" + m.group(2), doc.read_text(),
                 flags=re.S)  # fmt: skip
    atomic_write_text(doc, new)


if __name__ == "__main__":
    main()
