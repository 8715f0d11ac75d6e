"""Reading what `archrefine forecast` forecasts, and writing what it finds.

Inputs: an `archrefine run` directory (its metrics.parquet means are in simulator units), an
`archrefine loop` directory (validity; fitness is an accuracy; code novelty and diversity mapped
onto the grounded space where the loop recorded that, else compared up to a scale), or a
trajectory CSV as `calibrate` reads it. Outputs: forecast.json, forecast.png, fitted.toml.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from archrefine.core.config import Config, ConfigError, load_config
from archrefine.core.store import atomic_write_text, read_metrics, write_json
from archrefine.experiments.calibrate import (
    Calibration,
    CalibrationError,
    check_trajectory,
    load_trajectory,
)
from archrefine.experiments.trajectory import MAX_CYCLES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

METRICS = ("validity", "novelty", "diversity", "fitness")


class ForecastError(CalibrationError):
    """A bad forecast request, in one line (a ConfigError, so the CLI exits 2)."""


@dataclass
class Observed:
    """A run's observed per-cycle means, and the configuration that drives its simulation."""

    frame: pd.DataFrame  # cycle + observed columns (calibrate's names), one row per cycle
    config: Config  # the run's schedule, k, population, space, length
    cycles: int  # the run's length: the forecast's horizon
    trials: int  # independent trials behind each observed mean (1: a real loop, a CSV)
    source: str  # "run", "loop" or "csv"
    name: str = ""
    #: per cycle (index) and column, the across-trial standard deviation (runs of more than
    #: one trial; None otherwise). A forecast reads only its fitted cycles' rows: a hindcast
    #: must not weigh its residuals by the spread of the cycles it is to predict.
    noise: pd.DataFrame | None = None


@dataclass
class Forecast:
    """A finished forecast; `table` has one row per cycle (value, _lo, _hi per column)."""

    table: pd.DataFrame
    generator: str
    fit_cycles: int
    calibration: Calibration
    heldout: dict[str, float]  # per generator tried: held-out error (scaled RMS); empty: one
    summary: dict[str, float | None]  # final_validity, diversity_kept (+ _lo/_hi), observed ...
    info: dict[str, object] = field(default_factory=dict)


def load_observed(path: str | Path, *, cycles: int | None = None) -> Observed:
    """Read a run or loop directory (metrics.parquet + config.toml) or a trajectory CSV."""
    path = Path(str(path))
    if not path.exists():
        raise ForecastError(f"{path}: no such file or directory")
    obs = _from_directory(path) if path.is_dir() else _from_csv(path)
    if cycles is not None:
        if cycles > MAX_CYCLES:  # loop.cycles' bound, said of the option that set it
            raise ForecastError(f"--cycles {cycles}: at most {MAX_CYCLES} (a loop's longest)")
        if cycles < int(obs.frame["cycle"].max()):
            raise ForecastError(f"--cycles {cycles}: the run already has more observed cycles")
        obs.cycles = cycles
    obs.config = obs.config.with_overrides({"loop.cycles": obs.cycles})
    return obs


def _from_csv(path: Path) -> Observed:
    frame = load_trajectory(path)
    space = "grounded" if any(c in frame for c in ("novelty", "diversity")) else "abstract"
    return Observed(
        frame=frame,
        config=Config().with_overrides({"space.kind": space}),
        cycles=int(frame["cycle"].max()),
        trials=1,
        source="csv",
        name=str(path),
    )


def _from_directory(path: Path) -> Observed:
    metrics = read_metrics(path)
    if "experiment" in metrics.columns:
        raise ForecastError(
            f"{path}: a reproduce directory holds many conditions; forecast one run "
            "(archrefine run) or loop directory"
        )
    if "point" in metrics.columns:  # its base config is none of the points'
        raise ForecastError(
            f"{path}: a sweep directory holds many points; forecast one of them "
            f"({path / 'points'}/<point>)"
        )
    if not (path / "config.toml").is_file():  # the defaults would drive it, silently
        raise ForecastError(
            f"{path}: no config.toml, so not the run's schedule, k or population; forecast a "
            "run or loop directory, or the metrics as a trajectory CSV (docs/forecast.md)"
        )
    raw = _read_toml(path / "config.toml")
    real = any(k in raw for k in ("evaluate", "prompt", "novelty"))
    means = metrics.groupby("cycle").mean(numeric_only=True).reset_index()
    frame = pd.DataFrame({"cycle": means["cycle"].astype(int), "validity": means["validity"]})
    if real:
        config = _sim_config_of_loop(raw)
        frame["mean_accuracy"] = means["fitness"]  # the real loop's fitness is an accuracy
        if "grounded_diversity" in means and means["grounded_diversity"].notna().all():
            frame["novelty"] = means["grounded_novelty"]  # code mapped onto the grounded space
            frame["diversity"] = means["grounded_diversity"]
            config = config.with_overrides({"space.kind": "grounded"})
        else:  # MinHash distances of code: compared up to a scale
            frame["code_novelty"], frame["code_diversity"] = means["novelty"], means["diversity"]
    else:
        try:
            config = load_config(path / "config.toml") if raw else Config()
        except ConfigError as err:
            raise ForecastError(f"{path / 'config.toml'}: {err}") from None
        for col in METRICS[1:]:
            frame[col] = means[col]
    frame = check_trajectory(frame, name=str(path))
    cycles = max(config.loop.cycles, int(frame["cycle"].max())) if raw else len(frame)
    kind = "loop" if real else "run"
    trials = int(metrics["trial"].nunique())
    noise = metrics.groupby("cycle")[list(METRICS)].std() if trials > 1 and not real else None
    return Observed(frame, config, cycles, trials, kind, str(path), noise)


def hindcast_noise(path: str | Path, *, draws: int = 2000, seed: int = 0) -> dict[str, object]:
    """The standard error of a finished run's own final validity and diversity kept (final ÷
    first-cycle diversity, as the forecast's): the error no forecast can be held to beat. With
    several trials, from resampling the trials (`draws` times); with one (a real loop, a CSV),
    from the per-cycle series' scatter about its local trend, σ² ≈ mean((Δ²x)²)/6 (second
    differences remove a straight trend), a rough value: a curve that bends adds to it."""
    obs = load_observed(path)
    div = "diversity" if "diversity" in obs.frame else "code_diversity"
    if obs.trials > 1 and obs.source == "run":
        metrics = read_metrics(Path(str(path)))
        per = metrics.pivot_table(  # dropna=False: an all-NaN column stays (NaN), not a KeyError
            index="trial", columns="cycle", values=["validity", div], dropna=False
        )
        valid = per["validity"].iloc[:, -1].to_numpy()
        first, last = per[div].iloc[:, 0].to_numpy(), per[div].iloc[:, -1].to_numpy()
        pick = np.random.default_rng(seed).integers(0, len(valid), (draws, len(valid)))
        kept = last[pick].mean(axis=1) / first[pick].mean(axis=1)
        return {
            "final_validity": float(valid.std(ddof=1) / np.sqrt(len(valid))),
            "diversity_kept": float(kept.std(ddof=1)),
            "method": f"bootstrap over {len(valid)} trials",
        }
    frame = obs.frame.set_index("cycle")

    def scatter(col: str) -> float:
        x = frame[col].dropna().to_numpy(dtype=float)
        return float(np.sqrt(np.mean(np.diff(x, 2) ** 2) / 6)) if len(x) > 3 else float("nan")

    kept = float("nan")  # a CSV may have no diversity column
    if div in frame:
        first, last, sd = frame[div].iloc[0], frame[div].iloc[-1], scatter(div)
        kept = float(last / first * np.hypot(sd / last, sd / first))
    return {
        "final_validity": scatter("validity"),
        "diversity_kept": kept,
        "method": "scatter about the trend of one trial's cycles",
    }


def add_hindcast_noise(fc: Forecast, path: str | Path) -> None:
    """Where `fc` is a hindcast (the run reached its horizon), put the run's own standard errors
    (`hindcast_noise`) beside what it did: `observed_final_validity_se`,
    `observed_diversity_kept_se`; a miss within them is no miss of the forecast's."""
    if "observed_final_validity" in fc.summary:
        noise = hindcast_noise(path)
        fc.summary["observed_final_validity_se"] = float(noise["final_validity"])
        fc.summary["observed_diversity_kept_se"] = float(noise["diversity_kept"])


def _read_toml(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ForecastError(f"{path}: not valid TOML ({err})") from None


def _sim_config_of_loop(raw: dict) -> Config:
    """A real loop's population, k, length and schedule, as a simulator config (the real
    loop's own config class lives in a layer above this one, so its TOML is read as data)."""
    loop, sched = raw.get("loop", {}), raw.get("schedule", {})
    over = {f"loop.{k}": loop[k] for k in ("cycles", "population", "top_k") if k in loop}
    over |= {f"schedule.{k}": v for k, v in sched.items()}
    over["loop.population"] = max(int(over.get("loop.population", 50)), 2)
    try:
        return Config().with_overrides(over)
    except ConfigError as err:
        raise ForecastError(f"config.toml: {err}") from None


def _clean(x):
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


WIDE = 0.5  # a final-validity band wider than half the scale: the forecast says little


def caveats(fc: Forecast) -> list[str]:
    """What a reader of this forecast should know before relying on it, one line each: the
    fitted cycles leave final validity undetermined (its band spans more than `WIDE`), or the
    band was never checked against development runs (the learned generator's)."""
    s, notes = fc.summary, []
    lo, hi = s.get("final_validity_lo"), s.get("final_validity_hi")
    if lo is not None and hi is not None and hi - lo > WIDE:
        horizon = int(fc.table["cycle"].max())
        more = [n for n in (8, 10) if fc.fit_cycles < n < horizon]
        hint = f"; fit more cycles (--fit-cycles {more[0]})" if more else ""
        notes.append(
            f"cycles 1–{fc.fit_cycles} leave final validity undetermined (80% band "
            f"{lo:.2f}–{hi:.2f}){hint}"
        )
    if fc.info.get("conformal_fit_cycles") is None:  # no development runs measured its factors
        notes.append(
            f"the {fc.generator} generator's band is the model's own, not widened by development "
            "runs: it may hold the truth less than 80% of the time"
        )
    return notes


def forecast_json(fc: Forecast) -> dict:
    """forecast.json's content: the headline numbers, how they were made, and every cycle."""
    cycles = fc.table.to_dict(orient="records")
    return _clean(
        {
            **fc.summary,
            "caveats": caveats(fc),
            "generator": fc.generator,
            "fit_cycles": fc.fit_cycles,
            "heldout_error": fc.heldout,
            "params": fc.calibration.params,
            "maps": fc.calibration.maps,
            **fc.info,
            "cycles": cycles,
        }
    )


def write_forecast(out: Path, fc: Forecast) -> list[str]:
    """Write forecast.json, forecast.png and fitted.toml (the fit, for `archrefine run`)."""
    out = Path(out)
    write_json(out / "forecast.json", forecast_json(fc))
    config = fc.calibration.config.with_overrides({"loop.cycles": int(fc.table["cycle"].max())})
    atomic_write_text(out / "fitted.toml", config.to_toml())
    plot_forecast(fc, out / "forecast.png")
    return ["forecast.json", "forecast.png", "fitted.toml"]


def plot_forecast(fc: Forecast, path: Path) -> None:
    """One panel per forecast column: observed points (filled where fitted, open where held
    back), the fitted part, the forecast and its band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = fc.table
    cols = [c for c in t.columns if f"{c}_lo" in t.columns]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.3 * len(cols), 3.1), squeeze=False)
    fit, ahead = t[t["fitted"]], t[t["cycle"] >= fc.fit_cycles]
    for ax, col in zip(axes[0], cols):
        ax.fill_between(t["cycle"], t[f"{col}_lo"], t[f"{col}_hi"], color="tab:blue", alpha=0.18,
                        lw=0, label=f"{fc.info.get('interval', 0.8):.0%} band")  # fmt: skip
        ax.plot(fit["cycle"], fit[col], color="tab:orange", lw=2, label="fitted")
        ax.plot(ahead["cycle"], ahead[col], color="tab:blue", lw=2, label="forecast")
        if f"observed_{col}" in t:
            seen = t[f"observed_{col}"]
            ax.plot(fit["cycle"], seen[t["fitted"]], "o", color="black", ms=4, label="observed")
            later = t[~t["fitted"]]
            if seen[~t["fitted"]].notna().any():
                ax.plot(later["cycle"], seen[~t["fitted"]], "o", mfc="none", color="black", ms=4,
                        label="observed, not fitted")  # fmt: skip
        ax.axvline(fc.fit_cycles + 0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(col, fontsize=9)
        ax.set_xlabel("cycle")
        ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=7, loc="best")
    s = fc.summary
    fig.suptitle(
        f"{fc.generator} model fitted to cycles 1–{fc.fit_cycles}: final validity "
        f"{s['final_validity']:.3f} ({s['final_validity_lo']:.3f}–{s['final_validity_hi']:.3f}), "
        f"diversity kept {s['diversity_kept']:.3f} ({s['diversity_kept_lo']:.3f}–"
        f"{s['diversity_kept_hi']:.3f})",
        fontsize=9,
    )
    fig.tight_layout()
    from archrefine.experiments.plots import save_figure

    save_figure(fig, path, dpi=110, tight=False)


def summary_lines(fc: Forecast) -> str:
    """A few lines for the terminal."""
    s = fc.summary
    held = ", ".join(f"{g} {e:.3g}" for g, e in fc.heldout.items())
    lines = [
        f"generator {fc.generator}, fitted to cycles 1–{fc.fit_cycles} of {len(fc.table)}"
        + (f" (held-out error: {held})" if held else ""),
        f"final validity {s['final_validity']:.3f} "
        f"(80%: {s['final_validity_lo']:.3f}–{s['final_validity_hi']:.3f})",
        f"diversity kept {s['diversity_kept']:.3f} "
        f"(80%: {s['diversity_kept_lo']:.3f}–{s['diversity_kept_hi']:.3f})",
    ]
    if "observed_final_validity" in s:

        def se(key: str) -> str:
            value = s.get(f"{key}_se")
            return f" ± {value:.3f}" if value is not None and np.isfinite(value) else ""

        lines.append(
            f"observed: final validity {s['observed_final_validity']:.3f}"
            f"{se('observed_final_validity')}, diversity kept "
            f"{s['observed_diversity_kept']:.3f}{se('observed_diversity_kept')}"
            + (" (± its own standard error)" if se("observed_final_validity") else "")
        )
    lines += [f"note: {line}" for line in caveats(fc)]
    return "\n".join(lines)
