"""Writing and summarizing a calibration: files, overlay figure, one-screen summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from archrefine.core.store import atomic_write_text, write_json

if TYPE_CHECKING:
    from archrefine.experiments.calibrate import Calibration


def write_calibration(out: Path, cal: Calibration) -> list[str]:
    """Write params.json, residuals.csv, fitted.csv, fitted.toml and overlay.png (and loo.csv
    when the leave-one-cycle-out check ran; `loo_rmse` is null when it did not); return names."""
    out = Path(out)
    write_json(
        out / "params.json",
        {
            "params": cal.params,
            "stderr": cal.stderr,
            "interval90": {k: list(v) for k, v in cal.interval.items()},
            "rmse": cal.rmse,
            "maps": cal.maps,
            "info": cal.info,
            "loo_rmse": cal.loo_rmse,
        },
    )
    loo = [] if cal.loo is None else ["loo.csv"]
    if cal.loo is not None:
        atomic_write_text(out / "loo.csv", cal.loo.to_csv(index=False))
    atomic_write_text(out / "residuals.csv", cal.residuals.to_csv(index=False))
    atomic_write_text(out / "fitted.csv", cal.fitted.to_csv(index=False))
    atomic_write_text(out / "fitted.toml", cal.config.to_toml())
    overlay(cal, out / "overlay.png")
    return ["params.json", "residuals.csv", "fitted.csv", "fitted.toml", "overlay.png", *loo]


def overlay(cal: Calibration, path: Path) -> None:
    """Observed points against the fitted trajectory, one panel per observed column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from archrefine.experiments.fitting import RUN_MEAN_SUFFIX
    from archrefine.experiments.plots import cycle_axis

    table = cal.residuals
    cols = list(dict.fromkeys(c for c in table["column"] if not c.endswith(RUN_MEAN_SUFFIX)))
    fig, axes = plt.subplots(1, len(cols), figsize=(3.6 * len(cols), 3.2), squeeze=False)
    for ax, col in zip(axes[0], cols):
        obs = table[table["column"] == col]
        ax.plot(cal.fitted["cycle"], cal.fitted[col], color="tab:blue", label="fitted")
        ax.plot(obs["cycle"], obs["observed"], "o", color="black", label="observed")
        for row in table[table["column"] == col + RUN_MEAN_SUFFIX].itertuples():
            ax.axhline(row.observed, color="black", ls=":", lw=1, label="observed run mean")
            ax.axhline(row.fitted, color="tab:blue", ls=":", lw=1, label="fitted run mean")
        ax.set_title(f"{col} (RMSE {cal.rmse[col]:.3g})", fontsize=9)
        cycle_axis(ax)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from archrefine.experiments.plots import save_figure

    save_figure(fig, path, dpi=120, tight=False)


def summary(cal: Calibration) -> str:
    """A few lines for the terminal: each parameter ± its standard error, each column's RMSE."""
    lines = [
        f"{k} = {v:.4g} ± {cal.stderr[k]:.2g}  (90%: {cal.interval[k][0]:.3g}–"
        f"{cal.interval[k][1]:.3g})"
        for k, v in cal.params.items()
    ]
    lines += [f"RMSE {c}: {v:.4g}" for c, v in cal.rmse.items()]
    lines += [f"leave-one-out RMSE {c}: {v:.4g}" for c, v in (cal.loo_rmse or {}).items()]
    lines.append(f"loss {cal.info['loss_start']:.4g} → {cal.info['loss']:.4g}")
    return "\n".join(lines)
