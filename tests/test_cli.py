"""The command line, run as a user runs it: a real subprocess, real files."""

import json
import re
import socket
import subprocess
import sys

import pandas as pd
import pytest

from archrefine.core.store import read_metrics


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "archrefine", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_run_writes_resolved_config_and_metrics(tmp_path):
    out = tmp_path / "r"
    p = cli("run", "--set", "trials=3", "--set", "loop.cycles=5", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "cycles = 5" in (out / "config.toml").read_text()
    m = pd.read_parquet(out / "metrics.parquet")
    assert {"trial", "cycle", "validity", "novelty", "diversity", "fitness"} <= set(m.columns)
    assert m.cycle.min() == 1 and len(m) == 15
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert (out / "trajectory.png").stat().st_size > 1000
    again = cli("run", "--set", "trials=3", "--out", str(out))
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_run_without_figures_writes_the_results_and_plot_draws_them_later(tmp_path):
    out = tmp_path / "r"
    p = cli("run", "--set", "trials=3", "--set", "loop.cycles=4", "--no-figures", "--out", str(out))
    assert p.returncode == 0, p.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete"
    assert set(info["files"]) == {"config.toml", "metrics.parquet", "checkpoint.bin"}
    assert not (out / "trajectory.png").exists() and not (out / "report.html").exists()
    assert len(read_metrics(out)) == 12
    assert cli("plot", str(out)).returncode == 0 and (out / "trajectory.png").stat().st_size > 1000


def test_run_from_a_config_file(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("trials = 2\n[loop]\ncycles = 3\n[schedule]\nkind = 'cyclic'\n")
    p = cli("run", str(cfg), "--out", str(tmp_path / "r"))
    assert p.returncode == 0, p.stderr
    assert 'kind = "cyclic"' in (tmp_path / "r" / "config.toml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--set", "schedule.kind=cosin"], "schedule.kind: 'cosin' is not one of"),
        (["run", "--set", "loop.population=-3"], "loop.population"),
        (["run", "missing.toml"], "missing.toml: no such config file"),
        (["reproduce", "--trials", "0"], "trials: Input should be greater than or equal to 1"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    p = cli(*args, "--out", str(tmp_path / "x"))
    assert p.returncode == 2
    lines = [line for line in p.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0], p.stderr


def test_plot_rejects_a_corrupt_results_file(tmp_path):
    (tmp_path / "metrics.parquet").write_bytes(b"garbage")
    p = cli("plot", str(tmp_path))
    assert p.returncode == 2 and "not a readable Parquet file" in p.stderr


def test_reproduce_small_writes_every_output_and_plot_redraws(tmp_path):
    out = tmp_path / "rep"
    p = cli("reproduce", "--trials", "6", "--seed", "2", "--out", str(out))
    assert p.returncode == 0, p.stderr
    for name in (
        "fig1_trajectory.png",
        "fig2_topk.png",
        "fig3_phases.png",
        "fig4_schedules.png",
        "metrics.parquet",
        "claims.json",
        "claims.md",
        "config.toml",
    ):
        assert (out / name).exists(), name
    claims = json.loads((out / "claims.json").read_text())
    assert [c["id"] for c in claims] == [f"C{i}" for i in range(1, 8)]
    for c in claims:
        assert set(c) == {"id", "claim", "paper", "measured", "tolerance", "holds", "confidence"}
        assert isinstance(c["holds"], bool) and 0 <= c["confidence"] <= 1
    m = read_metrics(out)
    assert set(m.experiment) == {"trajectory", "topk", "schedules"}
    phases = json.loads((out / "phases.json").read_text())
    numbers = [x for v in phases.values() for x in (v if isinstance(v, list) else [v])]
    assert numbers and all(float(f"{x:.6g}") == x for x in numbers)  # no 16.549999999999983
    assert "C7" in p.stdout
    (out / "fig2_topk.png").unlink()
    assert cli("plot", str(out)).returncode == 0
    assert (out / "fig2_topk.png").exists()


def test_config_command_prints_resolved_toml():
    p = cli("config", "--set", "loop.top_k=5")
    assert p.returncode == 0 and "top_k = 5" in p.stdout


def test_a_killed_run_is_recognisable_and_not_overwritten(tmp_path):
    """SIGKILL mid-run: run.json still says running, no visible file is half-written."""
    import os
    import signal
    import time

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archrefine", "reproduce", "--trials", "400", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while not (out / "config.toml").exists() and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    for path in out.iterdir():
        if path.name == "metrics.parquet":
            read_metrics(path)  # complete if present
    refused = cli("run", "--out", str(out))
    assert refused.returncode == 2 and "already holds a run" in refused.stderr


def test_calibrate_fits_the_shipped_trajectory(tmp_path):
    from archrefine.experiments.calibrate import KHALID

    out = tmp_path / "cal"
    p = cli("calibrate", str(KHALID), "--trials", "4", "--out", str(out))
    assert p.returncode == 0, p.stderr
    for name in ("params.json", "residuals.csv", "fitted.toml", "overlay.png"):
        assert (out / name).exists(), name
    bad = tmp_path / "bad.csv"
    bad.write_text("step,foo\n1,2\n")
    p = cli("calibrate", str(bad), "--out", str(tmp_path / "c2"))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


# --- issue 13: the small things ---------------------------------------------------------------


def _commands() -> dict:
    import typer

    from archrefine.cli import app

    return typer.main.get_command(app).commands


def test_no_help_text_is_empty_a_placeholder_or_eaten_by_markup():
    """Every argument and option says something, and rich prints it whole: a `[...]` rich takes
    for markup ("[one per core]") would vanish and leave "Processes ."."""
    from rich.text import Text
    from typer.testing import CliRunner

    from archrefine.cli import app

    bad = []
    for name, command in _commands().items():
        for p in command.params:
            if "--help" in p.opts:
                continue
            text = (p.help or "").strip()
            if not text or text.endswith(" .") or Text.from_markup(text).plain != text:
                bad.append(f"{name} {p.opts[0]}: {text!r}")
        shown = CliRunner().invoke(app, [name, "--help"])
        assert shown.exit_code == 0, shown.output
        bad += [f"{name} --help: {line.strip()}" for line in shown.output.splitlines()
                if re.search(r"\w \.(\s|│|$)", line)]  # fmt: skip
    assert not bad


def test_serve_refuses_a_port_out_of_range_and_one_in_use_in_one_line():
    from typer.testing import CliRunner

    from archrefine.cli import app

    far = CliRunner().invoke(app, ["serve", "--port", "80001"])
    assert far.exit_code == 2 and "65535" in far.output and "Traceback" not in far.output
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = cli("serve", "--port", str(port))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith(f"error: 127.0.0.1:{port} is in use") and "--port 0" in lines[0]


def test_config_loop_without_the_real_extra_is_one_line(monkeypatch):
    """Simulate an install without `archrefine[real]`: the same one line as `loop` says."""
    import importlib.util

    from typer.testing import CliRunner

    from archrefine.cli import app

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datasketch" else
        real_find_spec(name, *a),
    )  # fmt: skip
    for args in (["config", "--loop", "--reference"], ["loop"]):
        result = CliRunner().invoke(app, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith("error: the real loop needs datasketch")
        assert "archrefine[real]" in lines[0]
    # and in a real process where datasketch cannot be imported at all
    hide = "import sys; sys.modules['datasketch'] = None; from archrefine.cli import main; main()"
    p = subprocess.run([sys.executable, "-c", hide, "config", "--loop", "--reference"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 2 and p.stderr.startswith("error: the real loop needs datasketch")
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_run_takes_trials_and_seed_like_reproduce(tmp_path):
    from typer.testing import CliRunner

    from archrefine.cli import app
    from archrefine.core.config import load_config

    out = tmp_path / "r"
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--trials", "2", "--seed", "7", "--set",
                                 "loop.cycles=3", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = load_config(out / "config.toml")
    assert (cfg.trials, cfg.seed, cfg.loop.cycles) == (2, 7, 3)
    assert read_metrics(out).trial.nunique() == 2
    again = runner.invoke(app, ["run", "--resume", str(out), "--seed", "8"])
    assert again.exit_code == 2 and "drop --trials and --seed" in again.output


def test_runs_shows_whole_metric_names_at_80_columns(tmp_path):
    from typer.testing import CliRunner

    from archrefine.cli import app

    runner = CliRunner()
    args = ["run", "--trials", "2", "--set", "loop.cycles=2", "--out", str(tmp_path / "r1")]
    assert runner.invoke(app, args).exit_code == 0
    listing = runner.invoke(app, ["runs", str(tmp_path)], env={"COLUMNS": "80"})
    assert listing.exit_code == 0, listing.output
    header = next(line for line in listing.output.splitlines() if "validity" in line)
    assert header.split()[-4:] == ["validity", "novelty", "diversity", "fitness"], header
    row = next(line for line in listing.output.splitlines() if line.startswith("r1"))
    mean = read_metrics(tmp_path / "r1").query("cycle == 2").fitness.mean()
    assert row.split()[-1] == f"{mean:.3f}"  # the last column, not cropped


def test_export_reports_what_it_wrote(tmp_path):
    from typer.testing import CliRunner

    from archrefine.cli import app
    from archrefine.real.candidates import CandidateStore

    row = dict(run_id="r", cycle=1, trial=0, prompt="P", response="R", code="class Net: ...",
               status="ok", reason="ok", selected=False)  # fmt: skip
    with CandidateStore(tmp_path / "candidates.sqlite") as store:
        ids = store.add_many([row, row, row | {"prompt": None}, row])
        store.mark_selected(ids[:3])  # the one without a prompt is no fine-tuning pair
    runner = CliRunner()
    pairs = runner.invoke(app, ["export", str(tmp_path), "--format", "jsonl"])
    assert pairs.exit_code == 0, pairs.output
    assert "(2 prompt–completion pairs from the 4 candidates in the store)" in pairs.output
    assert len((tmp_path / "selected.jsonl").read_text().splitlines()) == 2
    table = runner.invoke(app, ["export", str(tmp_path)])
    assert table.exit_code == 0 and "(4 candidates)" in table.output, table.output
