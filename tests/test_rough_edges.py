"""Issue 13's small things outside the CLI: cycle-1 mutation rate, whole-cycle ticks, phases.json
numbers, a server that cannot listen."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pandas as pd
import pytest

from archrefine import Config, simulate
from archrefine.core.analysis import Phases
from archrefine.core.schedules import rates
from archrefine.experiments import plots
from archrefine.experiments.reproduce import phases_record


@pytest.mark.parametrize(
    ("kind", "start"), [("constant", "rate"), ("linear", "rate"), ("cyclic", "min_rate")]
)
def test_mutation_rate_at_cycle_one_is_the_schedules_starting_rate(kind, start):
    """Cycle 1 mutates nothing, yet its column holds the rate the schedule starts at; later
    cycles hold exactly the rates the generators were given."""
    cfg = Config(trials=2, seed=0).with_overrides({"schedule.kind": kind, "loop.cycles": 6})
    shown = simulate(cfg).metrics.groupby("cycle").mutation_rate.mean()
    assert shown.notna().all()
    assert shown[1] == pytest.approx(getattr(cfg.schedule, start))
    np.testing.assert_allclose(shown.to_numpy()[1:], rates(cfg.schedule, 6)[1:])


def _captured(monkeypatch) -> list:
    """Figures the plotting functions draw, kept instead of saved."""
    figures: list = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: figures.append(fig))
    return figures


def test_short_runs_get_ticks_at_whole_cycles_only(monkeypatch):
    figures = _captured(monkeypatch)
    frame = pd.DataFrame(  # three cycles: matplotlib alone ticks 1, 1.5, 2, 2.5, 3
        {"trial": 0, "cycle": [1, 2, 3], "validity": [0.1, 0.3, 0.5],
         "novelty": [0.9, 0.7, 0.5], "diversity": [0.8, 0.7, 0.7], "fitness": [0.2, 0.3, 0.4]}
    )  # fmt: skip
    plots.trajectory(frame, "unused.png")
    plots.overlay({"a": frame}, "unused.png")
    for fig in figures:
        for ax in fig.axes:
            lo, hi = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_fig4_draws_the_rate_from_cycle_one(monkeypatch):
    figures = _captured(monkeypatch)
    rows = []
    for kind in ("constant", "cyclic"):
        cfg = Config(trials=2, seed=1).with_overrides({"schedule.kind": kind, "loop.cycles": 5})
        rows.append(simulate(cfg).metrics.assign(experiment="schedules", condition=kind))
    plots.schedules(pd.concat(rows), "unused.png")
    rate_panel = figures[0].axes[0]
    assert [line.get_xdata()[0] for line in rate_panel.get_lines()] == [1, 1]
    assert all(np.isfinite(line.get_ydata()).all() for line in rate_panel.get_lines())


def test_phases_json_numbers_are_rounded_not_float_noise(tmp_path):
    found = Phases(
        boundaries=[6.25, 16.549999999999983], low=[5.0, 15.100000000000001], high=[7.5, 18.0],
        three_phase_fit=[6.25, 16.549999999999983], three_phase_low=[5.0, 15.1],
        three_phase_high=[7.5, 18.0], r2=[0.9715202211708159, 0.9991887072636729, math.nan],
    )  # fmt: skip
    record = phases_record(found)
    assert record["boundaries"] == [6.25, 16.55] and record["low"] == [5.0, 15.1]
    assert record["r2"][:2] == [0.97152, 0.999189] and math.isnan(record["r2"][2])
    assert record["min_gain"] == found.min_gain
    assert Phases(**json.loads(json.dumps(record))).boundaries == [6.25, 16.55]  # `plot` reads it


def test_a_server_that_cannot_listen_says_so_in_one_line():
    from archrefine.real.serve import GeneratorServer, ServeError, check_address

    with pytest.raises(ServeError, match=r"port 70000 is not a port number \(0–65535"):
        GeneratorServer(None, port=70000)  # type: ignore[arg-type]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"127.0.0.1:{port} is in use"):
            check_address("127.0.0.1", port)
    check_address("127.0.0.1", 0)  # any free port: fine
