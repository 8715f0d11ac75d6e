"""What a newcomer following README.md and docs/*.md sees: regressions found walking them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from archrefine.experiments import plots


def _frame(trials: int) -> pd.DataFrame:
    rows = [
        {
            "trial": t,
            "cycle": c,
            "validity": c / 5,
            "novelty": 1 - c / 10,
            "diversity": 0.9,
            "fitness": 0.5 + t / 100,
        }
        for t in range(trials)
        for c in range(1, 6)
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("trials", [1, 3])
def test_trajectory_of_one_run_has_no_std_legend(trials, tmp_path, monkeypatch):
    """A real loop is one run: its trajectory.png showed a "± std" legend entry with no band."""
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: figs.append(fig))
    plots.trajectory(_frame(trials), tmp_path / "t.png")
    legend = figs[0].axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()] if legend else []
    assert ("± std" in labels) == (trials > 1)
    assert ("mean" in labels) == (trials > 1)
    assert len(figs[0].axes[0].collections) == (1 if trials > 1 else 0)


def test_schedules_legend_does_not_cover_rising_validity(tmp_path, monkeypatch):
    """fig4's validity panel put its legend in the lower left, over curves that start at 0."""
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: figs.append(fig))
    cycles = np.arange(1, 23)
    frame = pd.concat(
        pd.DataFrame(
            {
                "experiment": "schedules",
                "condition": kind,
                "trial": 0,
                "cycle": cycles,
                "validity": cycles / 22,
                "novelty": 0.5,
                "diversity": 1 - cycles / 100,
                "fitness": 0.5,
                "mutation_rate": 0.8,
            }
        )
        for kind in ("constant", "linear", "cosine", "cyclic")
    )
    plots.schedules(frame, Path(tmp_path / "s.png"))
    fig = figs[0]
    fig.canvas.draw()
    ax = fig.axes[2]
    box = ax.get_legend().get_window_extent()
    for line in ax.get_lines():
        xy = ax.transData.transform(np.column_stack(line.get_data()))
        inside = (
            (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
        )
        assert not inside.any()


def test_robustness_figure_title_fits_a_narrow_figure(tmp_path, monkeypatch):
    """`archrefine robustness --param ONE` drew a title wider than its figure, cut off."""
    from archrefine.experiments import robustness_report

    claims = [
        {
            "id": f"C{i}",
            "share_seeds": 0.5,
            "share_neighbourhood": 0.5,
            "held": 1,
            "seeds": 2,
            "neighbourhood": {"generator.base_logit": {"-": True, "+": False}},
            "robust": False,
        }
        for i in range(1, 8)
    ]
    summary = {
        "claims": claims,
        "parameters": ["generator.base_logit"],
        "perturb": 0.15,
        "sensitivity": {},
        "seeds": [1, 2],
        "trials": 5,
    }
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: figs.append(fig))
    robustness_report.figure(summary, tmp_path / "r.png")
    fig = figs[0]
    fig.canvas.draw()
    width = fig.bbox.width
    for ax in fig.axes:
        box = ax.title.get_window_extent()
        assert box.x0 >= 0 and box.x1 <= width
