"""The command line, run as a user runs it: a real subprocess, real files."""

import json
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
