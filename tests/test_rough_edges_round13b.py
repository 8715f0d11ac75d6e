"""Rough edges, round 13b: JSON files are strict JSON (a value that is not a finite number is
null, never Python's `NaN`/`Infinity`, which `JSON.parse` and jq refuse) and every reader takes
the null; `calibrate` refuses data with fewer values than free parameters before writing
anything; and the wording of a ragged or repeated-column CSV, `forecast --fit-cycles` and
`--cycles`, `runs`/`report` given a file and `loop --resume` of a missing directory."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_rough_edges_more import invoke, one_line_error
from typer.testing import CliRunner

from archrefine.cli import app
from archrefine.core import formats, store
from archrefine.core.store import write_json


def strict(path: Path):
    """A JSON file read as a strict parser reads it: NaN, Infinity and -Infinity refused."""

    def refuse(name: str):
        raise ValueError(f"{path.name}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---- 1. strict JSON ---------------------------------------------------------------------------


def test_written_json_is_strict_with_null_for_every_non_finite_number(tmp_path):
    nan, inf = float("nan"), float("inf")
    data = {
        "nan": nan,
        "inf": inf,
        "minus_inf": -inf,
        "numpy": [np.float64(nan), np.float32(inf), np.float32(0.5), np.int64(3)],
        "nested": {"deeper": [{"x": nan}, (1.0, -inf)]},
        "array": np.array([1.0, nan]),
        "fine": [0.0, 1, "NaN", None, True],
    }
    path = tmp_path / "out.json"
    write_json(path, data)
    got = strict(path)
    assert got == {
        "nan": None,
        "inf": None,
        "minus_inf": None,
        "numpy": [None, None, 0.5, 3],
        "nested": {"deeper": [{"x": None}, [1.0, None]]},
        "array": [1.0, None],
        "fine": [0.0, 1, "NaN", None, True],
    }


def test_a_non_finite_number_the_cleaning_misses_fails_loudly(tmp_path, monkeypatch):
    """The writer refuses NaN itself (allow_nan=False): a missed case is an error, never a
    file no strict parser reads."""
    monkeypatch.setattr(formats, "finite", lambda data: data)
    with pytest.raises(ValueError):
        write_json(tmp_path / "out.json", {"x": float("nan")})
    assert not (tmp_path / "out.json").exists()


def test_interventions_table_with_no_valid_reference_is_written_as_null(tmp_path):
    """A tiny reproduction whose constant schedule wrote nothing valid: validity_share is
    NaN in memory (no division by zero), null in interventions.json."""
    from archrefine.experiments.intervene import objectives

    ref = {"kept": 1.0, "peak_validity": 0.0, "best_fitness": 0.5}
    table = {"linear": {**ref, **objectives({**ref, "peak_validity": 0.1}, ref)}}
    assert math.isnan(table["linear"]["validity_share"])
    write_json(tmp_path / "interventions.json", table)
    assert strict(tmp_path / "interventions.json")["linear"]["validity_share"] is None


def test_params_json_of_a_fit_without_standard_errors_is_strict(tmp_path):
    """No bootstrap (n_boot 0): every standard error is NaN, written as null."""
    from archrefine.experiments.calibrate import calibrate
    from archrefine.experiments.calibrate_report import write_calibration

    frame = pd.DataFrame({"cycle": [1, 2, 3], "validity": [0.1, 0.2, 0.3]})
    cal = calibrate(
        frame, params=["generator.bonus_rate"], trials=2, n_boot=0, max_nfev=1, workers=1
    )
    assert all(math.isnan(v) for v in cal.stderr.values())
    write_calibration(tmp_path, cal)
    params = strict(tmp_path / "params.json")
    assert params["stderr"] == {"generator.bonus_rate": None}


def test_a_report_takes_null_where_phases_json_had_nan(tmp_path):
    """R² of a kink count that does not fit is null: its row keeps its place and says –."""
    from archrefine.report.html import build

    rows = [
        {"trial": t, "cycle": c, "validity": 0.1 * c, "novelty": 0.5, "diversity": 0.5,
         "fitness": 0.4}
        for t in range(2)
        for c in range(1, 4)
    ]  # fmt: skip
    store.write_parquet(tmp_path / "metrics.parquet", pd.DataFrame(rows))
    write_json(tmp_path / "run.json", {"kind": "run", "status": "complete"})
    phases = {
        "boundaries": [2.5, float("nan")],
        "low": [2.0, float("nan")],
        "high": [3.0, float("inf")],
        "r2": [0.5, float("nan"), 0.9],
        "min_gain": 0.02,
        "three_phase_fit": [],
        "three_phase_low": [],
        "three_phase_high": [],
    }
    write_json(tmp_path / "phases.json", phases)
    page = build(tmp_path)
    section = page.split('id="sec-phases"', 1)[1].split("</section>", 1)[0]
    assert "<td class='num'>1</td><td class='num'>–</td>" in section  # one kink: no fit
    assert "<td class='num'>2</td><td class='num'>0.9000</td>" in section  # still two kinks
    assert "2.5 (90% 2–3)" in section and "– (90% –––)" in section


def test_forecast_reads_a_null_conformal_factor_as_unbounded(tmp_path, monkeypatch):
    from archrefine.experiments import forecast

    path = tmp_path / "factors.json"
    write_json(path, {"factor": {"validity": float("inf"), "diversity": 1.5}})
    assert '"validity": null' in path.read_text()  # as the development script now writes it
    monkeypatch.setattr(forecast, "measured_fit_cycles", lambda: [6])
    monkeypatch.setattr(forecast, "conformal_path", lambda n: path)
    factors, at = forecast.load_conformal(6)
    assert factors == {"validity": math.inf, "diversity": 1.5} and at == 6


def test_runs_json_is_strict(tmp_path):
    out = tmp_path / "r"
    done = invoke("run", "--trials", "2", "--set", "loop.cycles=2", "--no-figures", "--out", out)
    assert done.exit_code == 0, done.output
    listed = CliRunner().invoke(app, ["runs", str(tmp_path), "--json"])
    assert listed.exit_code == 0, listed.output
    (tmp_path / "listing.json").write_text(listed.stdout)
    assert strict(tmp_path / "listing.json")[0]["kind"] == "run"


# ---- 2. calibrate on too few values -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, args, said",
    [
        ("cycle,validity\n1,0.3\n", [], "1 observed value for 5 free parameters"),
        ("cycle,validity\n1,0.3\n2,0.4\n", [], "2 observed values for 5 free parameters"),
        (
            "cycle,validity,mean_accuracy\n1,0.3,0.2\n2,0.4,\n",
            ["--params", "generator.base_logit,generator.bonus_max"],
            "3 observed values for 4 free parameters (2 of the paper generator and 2 of the "
            "observation maps)",
        ),
    ],
)
def test_calibrate_refuses_fewer_values_than_free_parameters(tmp_path, text, args, said):
    csv = tmp_path / "t.csv"
    csv.write_text(text)
    out = tmp_path / "o"
    one_line_error(invoke("calibrate", csv, *args, "--trials", "2", "--out", out), "t.csv: ", said)
    assert not out.exists()


def test_calibrate_check_counts_run_means_and_passes_enough_values():
    from archrefine.experiments.calibrate import CalibrationError
    from archrefine.experiments.loo import check_values

    frame = pd.DataFrame({"cycle": [1, 2, 3, 4], "validity": [0.1, 0.2, 0.3, 0.2]})
    with pytest.raises(CalibrationError, match="4 observed values for 5 free parameters"):
        check_values(frame)
    check_values(frame, run_means={"validity": 0.2})  # the run mean is the fifth value
    check_values(frame, params=["generator.base_logit", "generator.bonus_max"])


# ---- 3. wording -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, said",
    [
        (
            "cycle,validity\n1,0.3,extra\n2,0.1\n",
            "line 2 has too many fields (3; the header has 2)",
        ),
        (
            "# a comment\ncycle,validity\n1,0.3\n2,0.1,extra\n3,0.2\n",
            "line 4 has too many fields (3; the header has 2)",
        ),
        ("cycle,validity,validity\n1,0.3,0.2\n", "column 'validity' is repeated in the header"),
    ],
)
def test_a_ragged_row_or_a_repeated_column_is_named(tmp_path, text, said):
    csv = tmp_path / "t.csv"
    csv.write_text(text)
    out = tmp_path / "o"
    for command in ("calibrate", "forecast"):
        one_line_error(invoke(command, csv, "--out", out), "t.csv: ", said)
    assert not out.exists()


def test_a_trailing_empty_column_and_a_bom_still_read(tmp_path):
    from archrefine.experiments.trajectory import read_trajectory

    csv = tmp_path / "t.csv"
    csv.write_bytes("\ufeffcycle,validity\n1,0.3\n2,\n3,0.2\n".encode())
    frame, means = read_trajectory(csv)
    assert list(frame.columns) == ["cycle", "validity"] and len(frame) == 3 and not means


def test_forecast_fit_cycles_minimum_is_one_number(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("cycle,validity\n" + "".join(f"{c},0.{c}\n" for c in range(1, 8)))
    out = tmp_path / "o"
    for n in ("-1", "2"):
        one_line_error(
            invoke("forecast", csv, "--fit-cycles", n, "--out", out),
            f"--fit-cycles {n}: need at least 3 cycles to fit",
        )
    sparse = tmp_path / "s.csv"
    sparse.write_text("cycle,validity\n1,0.1\n2,\n3,0.3\n4,\n5,0.5\n6,0.4\n")
    one_line_error(
        invoke("forecast", sparse, "--fit-cycles", "3", "--out", out),
        "2 observed cycles among 1..3; need at least 3",
    )
    assert not out.exists()


def test_forecast_cycles_beyond_a_loop_names_the_option(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("cycle,validity\n1,0.1\n2,0.2\n3,0.3\n4,0.4\n")
    line = one_line_error(
        invoke("forecast", csv, "--cycles", "1000000", "--out", tmp_path / "o"),
        "--cycles 1000000: at most 10000",
    )
    assert "loop.cycles" not in line


def test_runs_and_report_given_a_file_say_it_is_a_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    one_line_error(invoke("runs", path), "notes.txt: a file, not a directory")
    one_line_error(invoke("report", path), "notes.txt: a file, not a directory")
    one_line_error(invoke("runs", tmp_path / "missing"), "missing: no such directory")


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "datasketch", "sklearn")),
    reason="the real loop's extra is not installed",
)
def test_loop_resume_of_a_missing_directory_says_so(tmp_path):
    missing = tmp_path / "missing"
    line = one_line_error(invoke("loop", "--resume", missing), "no such loop directory")
    assert "config.toml" not in line
    path = tmp_path / "f.txt"
    path.write_text("x")
    one_line_error(invoke("loop", "--resume", path), "a file, not a loop directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(invoke("loop", "--resume", empty), "holds no loop run")
    assert list(empty.iterdir()) == []
