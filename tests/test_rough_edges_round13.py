"""Bad input at the command line, round 13: NaN and infinities in a config, a checkpoint whose
cycle count is damaged, a sweep record of the wrong shape, a directory where a result file
belongs, damaged phases.json and claims.json, one-cycle reproductions, and `--out` pointing at
a run's own files. Each is one `error: ...` line naming the problem (exit status 2, no
traceback), and what a run already wrote is left as it was."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_rough_edges_more import checksums, invoke, one_line_error

from archrefine.sim.checkpoint import MAGIC


def as_if_killed(directory: Path) -> None:
    """Mark a finished run as one whose process died mid-way (a pid that has exited)."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    info = json.loads((directory / "run.json").read_text())
    info.update(status="running", pid=gone.pid, pid_start=None)
    info.pop("finished", None)
    (directory / "run.json").write_text(json.dumps(info))


NAN = float("nan")
SMALL = ["--trials", "2", "--set", "loop.cycles=3", "--no-figures"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished 3-cycle run of 2 trials, checkpointed every cycle (copy it before changing)."""
    out = tmp_path_factory.mktemp("base") / "run"
    result = invoke("run", *SMALL, "--set", "checkpoint.every_s=0", "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory) -> Path:
    """A small finished reproduce directory (copy it before changing)."""
    out = tmp_path_factory.mktemp("rep") / "rep"
    args = ["--trials", "1", "--set", "loop.cycles=3", "--workers", "1", "--out", out]
    result = invoke("reproduce", *args)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize(
    "override",
    ["generator.base_logit=nan", "generator.bonus_max=inf", "generator.familiarity=-inf"],
)
def test_nan_or_an_infinity_in_a_config_is_refused(tmp_path, override):
    """Accepted before, they ran through the loop into NaN validity and fitness."""
    out = tmp_path / "o"
    key = override.split("=")[0]
    one_line_error(invoke("run", *SMALL, "--set", override, "--out", out), key, "finite number")
    assert not out.exists()
    toml = tmp_path / "nan.toml"
    toml.write_text("[generator]\nbase_logit = nan\n")
    one_line_error(invoke("run", toml, *SMALL, "--out", out), "nan.toml", "finite number")
    sweep = ["sweep", "--set", "generator.base_logit=1,nan", "--out", out]
    one_line_error(invoke(*sweep), "generator.base_logit", "finite number")
    assert not out.exists()


def _set_header(path: Path, **fields) -> None:
    data = path.read_bytes()
    at = len(MAGIC) + 8
    size = int.from_bytes(data[len(MAGIC) : at], "little")
    header = json.loads(data[at : at + size]) | fields
    text = json.dumps(header).encode()
    path.write_bytes(MAGIC + len(text).to_bytes(8, "little") + text + data[at + size :])


@pytest.mark.parametrize(
    ("cycle", "said"),
    [
        ("x", 'cycle "x" is not a count'),  # was a ValueError traceback
        (None, "cycle null is not a count"),  # a TypeError traceback
        (-1, "cycle -1 is not a count"),  # resumed silently, with results unlike the run's
        (1, "do not hold the 1 cycles"),  # likewise: another cycle's random state
    ],
)
def test_a_checkpoint_whose_cycle_count_is_damaged_is_one_line(base, tmp_path, cycle, said):
    run = shutil.copytree(base, tmp_path / "run")
    as_if_killed(run)
    _set_header(run / "checkpoint.bin", cycle=cycle)
    before = checksums(run)
    one_line_error(invoke("run", "--resume", run), "checkpoint.bin: not a readable", said)
    assert checksums(run) == before


@pytest.fixture
def sweep(tmp_path) -> Path:
    out = tmp_path / "sweep"
    grid = ["--set", "trials=2", "--set", "loop.cycles=2", "--set", "seed=0,1"]
    result = invoke("sweep", *grid, "--workers", "1", "--out", out)
    assert result.exit_code == 0, result.output
    as_if_killed(out)
    return out


@pytest.mark.parametrize("record", [[1, 2], {"grid": "seed=0,1"}, {"grid": {"seed": 5}}])
def test_a_sweep_record_of_the_wrong_shape_is_one_line(sweep, record):
    """A list, or a grid that is not lists of values, was an AttributeError traceback."""
    (sweep / "sweep.json").write_text(json.dumps(record))
    before = checksums(sweep)
    args = ["sweep", "--resume", sweep, "--workers", "1"]
    one_line_error(invoke(*args), "sweep.json: not a sweep record", "--set")
    assert checksums(sweep) == before


def test_a_directory_where_a_result_file_belongs_is_one_line(sweep, base, tmp_path):
    """An OSError on a path (os.replace onto a directory, a file where a folder belongs) was
    a traceback; it names the path and what is wrong with it."""
    point = next((sweep / "points").iterdir())
    (point / "metrics.parquet").unlink()
    (point / "metrics.parquet").mkdir()
    one_line_error(
        invoke("sweep", "--resume", sweep, "--workers", "1"),
        f"{point / 'metrics.parquet'}: cannot use it (Is a directory)",
    )
    shutil.rmtree(sweep / "points")
    (sweep / "points").write_text("not a folder\n")
    one_line_error(invoke("sweep", "--resume", sweep), "a folder on its path is a file")
    assert (sweep / "points").read_text() == "not a folder\n"

    run = shutil.copytree(base, tmp_path / "run")
    (run / "trajectory.png").mkdir()
    one_line_error(invoke("plot", run), "trajectory.png: cannot use it (Is a directory)")


@pytest.mark.parametrize(
    "phases",
    [
        {"boundaries": [3], "low": 1, "high": None, "three_phase_fit": [1]},
        {"boundaries": ["a"], "low": ["b"], "high": [1], "three_phase_fit": []},
        {"boundaries": [NAN, 3], "low": [NAN, 2], "high": [float("inf"), 4], "three_phase_fit": []},
    ],
)
def test_plot_and_report_take_a_damaged_phases_file(reproduction, tmp_path, phases):
    """plot drew with whatever phases.json held (a TypeError traceback): now it finds the
    phases again; report.html leaves out what is not a number (NaN was a ValueError) or says
    which field is not a list (a TypeError in the page)."""
    rep = shutil.copytree(reproduction, tmp_path / "rep")
    (rep / "phases.json").write_text(json.dumps(phases))
    assert invoke("plot", rep).exit_code == 0
    result = invoke("report", rep)
    if isinstance(phases["low"], list):
        assert result.exit_code == 0, result.output
    else:
        one_line_error(result, "phases.json: 'low' is not a list")


@pytest.mark.parametrize("claims", [[1, 2], {"C1": True}, ["C1"]])
def test_plot_takes_a_claims_file_that_is_not_a_list_of_claims(reproduction, tmp_path, claims):
    rep = shutil.copytree(reproduction, tmp_path / "rep")
    (rep / "claims.json").write_text(json.dumps(claims))
    result = invoke("plot", rep)  # an AttributeError traceback before
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "command",
    [
        ["reproduce", "--trials", "1", "--workers", "1"],
        ["robustness", "--seeds", "1", "--trials", "1", "--workers", "1"],
    ],
)
def test_the_paper_experiments_need_two_cycles(tmp_path, command):
    """One cycle ran every simulation, then failed in np.gradient with a traceback, leaving
    the directory marked running."""
    out = tmp_path / "o"
    result = invoke(*command, "--set", "loop.cycles=1", "--out", out)
    one_line_error(result, "loop.cycles", "at least 2 cycles", "got 1")
    assert not out.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["reproduce", "--trials", "1", "--workers", "1"],
        ["robustness", "--seeds", "1", "--trials", "1", "--workers", "1"],
    ],
)
def test_a_condition_the_settings_make_invalid_is_named_before_anything_is_written(
    tmp_path, command
):
    """`loop.top_k = 2` is a valid setting, but the schedules experiment's islands condition
    (4 islands) is not valid on top of it: the error came after the run directory was made,
    which was left marked running and refused the next start without --force."""
    out = tmp_path / "o"
    result = invoke(*command, "--set", "loop.population=4", "--set", "loop.top_k=2", "--out", out)
    one_line_error(result, "schedules experiment, condition islands", "loop.top_k (2)")
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "target", "said"),
    [
        ("report", "config.toml", "a file of the run in"),
        ("report", "metrics.parquet", "a file of the run in"),
        ("compare", "metrics.parquet", "a file of the run in"),
        ("compare", "checkpoint.bin", "a file of the run in"),
        ("compare", "run.json", "a file of the run in"),
    ],
)
def test_an_out_file_never_replaces_a_runs_results(base, tmp_path, command, target, said):
    """`report --out RUN/config.toml` wrote HTML over the run's config, `compare --out
    RUN/metrics.parquet` a PNG over its metrics: results lost."""
    run = shutil.copytree(base, tmp_path / "run")
    before = checksums(run)
    one_line_error(invoke(command, run, "--out", run / target), f"{target}: {said}")
    other = tmp_path / "table.csv"
    other.write_text("cycle,validity\n")
    one_line_error(invoke(command, run, "--out", other), "exists and is not a")
    assert checksums(run) == before and other.read_text() == "cycle,validity\n"


def test_an_out_file_of_the_same_kind_is_still_replaced(base, tmp_path):
    figure = tmp_path / "c.png"
    figure.write_bytes(b"old")
    assert invoke("compare", base, "--out", figure).exit_code == 0
    assert figure.read_bytes() != b"old"


def test_a_sweep_address_needs_the_ray_backend(tmp_path):
    """`--address` with the local backend was ignored: the grid ran here, not on the cluster."""
    out = tmp_path / "s"
    args = ["sweep", "--set", "seed=0,1", "--address", "ray://host:10001", "--out", out]
    one_line_error(invoke(*args), "--address ray://host:10001", "--backend ray")
    assert not out.exists()


def test_a_config_file_saved_with_a_byte_order_mark_loads(tmp_path):
    """Notepad's UTF-8 BOM made the file 'not valid TOML (Invalid statement ...)'."""
    config = tmp_path / "bom.toml"
    config.write_bytes(b"\xef\xbb\xbftrials = 2\n[loop]\ncycles = 2\n")
    result = invoke("config", config)
    assert result.exit_code == 0, result.output
    assert "trials = 2" in result.output and "cycles = 2" in result.output


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ("loop.cycles=1:5", "loop.cycles is not a real-valued parameter"),  # an IndexError
        ("loop.novelty_k=1:20", "loop.novelty_k is not a real-valued parameter"),
        ("space.kind=0:1", "space.kind is not a real-valued parameter"),  # a ValueError
        ("generator.ceiling=0.5:2", "generator.ceiling=0.5:2: generator.ceiling"),
    ],
)
def test_calibrate_fits_only_real_valued_parameters_within_their_bounds(tmp_path, params, said):
    """Each stopped the fit midway (a traceback, or a config error about a value the fit
    tried), leaving the calibration directory unfinished."""
    csv = tmp_path / "t.csv"
    csv.write_text("cycle,validity\n1,0.1\n2,0.2\n3,0.3\n4,0.4\n")
    out = tmp_path / "o"
    one_line_error(invoke("calibrate", csv, "--params", params, "--out", out), "--params: ", said)
    assert not out.exists()
