"""`archrefine intervene` (experiments/intervene.py) and the interventions in reproduce's plan."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from archrefine import Config
from archrefine.cli import app
from archrefine.core.config import load_config
from archrefine.experiments import intervene as iv
from archrefine.experiments.claims import SCHEDULE_KINDS, as_records, evaluate
from archrefine.experiments.reproduce import plan
from archrefine.experiments.runner import run_plan

TINY = Config(trials=3, seed=0).with_overrides({"loop.cycles": 6, "loop.population": 20})


def test_dominated_on_known_points():
    points = np.array([[1.0, 1.0], [0.5, 0.5], [2.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    assert list(iv.dominated(points)) == [False, True, False, False, False]


def test_goal_and_choice_follow_the_search_numbers():
    assert iv.meets_goal({"kept": 0.98, "validity_share": 0.99, "fitness_gain": 0.0})
    assert not iv.meets_goal({"kept": 0.99, "validity_share": 0.98, "fitness_gain": 0.1})
    front = [
        {"trial": 0, "search": {"kept": 0.99, "validity_share": 0.9, "fitness_gain": 0.0}},
        {"trial": 1, "search": {"kept": 0.95, "validity_share": 1.0, "fitness_gain": 0.01}},
        {"trial": 2, "search": {"kept": 0.93, "validity_share": 1.0, "fitness_gain": 0.02}},
    ]
    assert iv.choose(front)["trial"] == 1  # meets validity and fitness, keeps the most


def test_every_suggested_setting_is_a_valid_config():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=["maximize"] * 3, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    seen = set()
    for _ in range(200):
        trial = study.ask()
        over = iv.suggest(trial, TINY.loop.population)
        TINY.with_overrides(over)  # raises on an impossible combination
        seen |= set(over)  # a lever's keys appear only when the trial turns it on
        study.tell(trial, [0.0, 0.0, 0.0])
    for key in ("accumulate", "replay", "elite_share", "elite_rate", "novelty_weight", "qd"):
        assert f"intervention.{key}" in seen  # every lever is reached


@pytest.mark.slow  # Optuna, pyribs and matplotlib imports: ~10 s of the time
def test_intervene_writes_a_non_dominated_front_re_measured_on_fresh_seeds(tmp_path):
    out = tmp_path / "iv"
    args = ["intervene", "--budget", "5", "--out", str(out), "--set", "trials=3",
            "--set", "loop.cycles=6", "--set", "loop.population=20"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    front = json.loads((out / "pareto.json").read_text())
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 5 and (out / "pareto.png").stat().st_size > 1000
    points = trials[list(iv.OBJECTIVES)].to_numpy()
    on = trials.trial.isin([f["trial"] for f in front["front"]]).to_numpy()
    assert on.any() and not iv.dominated(points)[on].any()  # only non-dominated rows
    assert (iv.dominated(points) | on).all()  # and every non-dominated row
    assert front["search_seed"] != front["report_seed"]
    for f in front["front"]:
        assert set(f["fresh"]) == set(iv.OBJECTIVES)
    best = load_config(out / "best.toml")
    assert best.with_overrides(front["best"]["overrides"]) == best
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "0"], "--budget: must be at least 1"),
        (["--search-seed", "7", "--report-seed", "7"], "must differ"),
        (["--search-seed", "7", "--report-seed", "8", "--seeds", "2"], "must differ"),
        (["--seeds", "0"], "--seeds: must be at least 1"),
        (["--set", "intervention.islands=0"], "intervention.islands"),
    ],
)
def test_intervene_bad_input_is_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["intervene", *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_reproduce_adds_interventions_without_changing_the_claims():
    experiments = plan(TINY)
    assert set(iv.CONDITIONS) <= set(experiments["schedules"])
    small = {"trajectory": experiments["trajectory"], "schedules": experiments["schedules"]}
    frame = run_plan(TINY, small, workers=1)
    paper = frame[frame.condition.isin(["baseline", *SCHEDULE_KINDS])]
    with_iv = as_records(evaluate(frame, n_boot=10))
    without = as_records(evaluate(paper.reset_index(drop=True), n_boot=10))
    assert with_iv == without
    table = iv.conditions_table(frame)
    assert table["constant"]["validity_share"] == 1.0 and table["constant"]["fitness_gain"] == 0
    assert set(iv.CONDITIONS) <= set(table)


def test_a_reference_without_valid_candidates_gives_nan_not_an_error():
    """A tiny run whose constant schedule never wrote a valid candidate: the validity share is
    undefined (NaN, so the goal is not met), and nothing raises."""
    run = {"kept": 0.9, "peak_validity": 0.0, "best_fitness": 0.1}
    obj = iv.objectives(run, {"kept": 1.0, "peak_validity": 0.0, "best_fitness": 0.1})
    assert np.isnan(obj["validity_share"]) and not iv.meets_goal(obj)
    ok = iv.objectives(run | {"peak_validity": 0.5}, {"peak_validity": 0.25, "best_fitness": 0.0})
    assert ok["validity_share"] == 2.0 and ok["fitness_gain"] == pytest.approx(0.1)
