"""Experiment tracking: what `--track mlflow` logs, read back from a local MLflow store."""

from __future__ import annotations

import importlib.util
import json
import socket
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from archrefine.cli import app
from archrefine.core.config import Config, ConfigError, load_config
from archrefine.real.config import RealConfig
from archrefine.report import tracking
from archrefine.report.tracking import flatten, log_directory

CYCLES = 3
needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason="the track extra (MLflow) is not installed"
)


def MlflowClient(tracking_uri: str):  # noqa: N802 - reads as the class it returns
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A file store in tmp_path (mlflow-skinny alone can open it; MLflow 3 asks for the opt-in)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return (tmp_path / "mlruns").as_uri()


def runs_of(uri: str, experiment: str = "archrefine") -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_flatten_gives_dotted_params_as_toml_writes_them() -> None:
    flat = flatten({"trials": 3, "loop": {"top_k": 5, "archive": "all"}, "x": {"on": True}})
    assert flat == {"trials": "3", "loop.top_k": "5", "loop.archive": "all", "x.on": "true"}
    assert "tracking.backend" in flatten(Config().model_dump())


@needs_mlflow
def test_run_logs_config_metrics_per_cycle_and_files(tmp_path, store) -> None:
    out = tmp_path / "r"
    args = ["run", "--set", "trials=2", "--set", f"loop.cycles={CYCLES}", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--set", f"tracking.uri={store}", "--track", "mlflow"])
    assert result.exit_code == 0, result.output
    assert "tracked: MLflow run" in result.stderr and "warning" not in result.stderr
    (run,) = runs_of(store)
    client = MlflowClient(tracking_uri=store)
    assert run.info.run_name == "r" and run.info.status == "FINISHED"
    assert run.data.params["loop.cycles"] == str(CYCLES) and run.data.params["trials"] == "2"
    assert run.data.params["tracking.uri"] == store  # the whole config, as config.toml has it
    assert run.data.tags["archrefine.kind"] == "run"
    means = pd.read_parquet(out / "metrics.parquet").groupby("cycle").validity.mean()
    logged = history(client, run.info.run_id, "validity")
    assert [step for step, _ in logged] == list(range(1, CYCLES + 1))  # step = cycle
    assert [v for _, v in logged] == pytest.approx(means.tolist())  # the mean over trials
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.toml", "metrics.parquet", "trajectory.png", "run.json"} <= files


def write_reproduce_like(out: Path) -> pd.DataFrame:
    """A reproduce directory with known numbers: two conditions, two trials, three cycles."""
    out.mkdir()
    rows = [
        dict(experiment=exp, condition=cond, trial=t, cycle=c, validity=base + c / 10 + t / 100,
             novelty=float("nan") if c == 1 else 0.5)
        for exp, cond, base in (("trajectory", "baseline", 0.0), ("topk", "k=5", 0.5))
        for t in (0, 1) for c in range(1, CYCLES + 1)
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.to_parquet(out / "metrics.parquet")
    claims = [
        {"id": "C1", "claim": "phases", "holds": False, "confidence": 0.25},
        {"id": "C2", "claim": "inverse", "holds": True, "confidence": None},
    ]
    (out / "claims.json").write_text(json.dumps(claims))
    (out / "config.toml").write_text(Config(trials=2).to_toml())
    files = ["config.toml", "metrics.parquet", "claims.json"]
    info = {"kind": "reproduce", "status": "complete", "started": "2026-01-02T03:04:05+00:00",
            "finished": "2026-01-02T03:05:05+00:00", "files": files}  # fmt: skip
    (out / "run.json").write_text(json.dumps(info))
    return frame


@needs_mlflow
def test_reproduce_logs_claims_and_one_nested_run_per_condition(tmp_path, store) -> None:
    frame = write_reproduce_like(tmp_path / "rep")
    parent_id = log_directory(tmp_path / "rep", store, warn=pytest.fail)
    client = MlflowClient(tracking_uri=store)
    parent = client.get_run(parent_id)
    assert parent.data.metrics == {"C1.holds": 0.0, "C1.confidence": 0.25, "C2.holds": 1.0}
    assert parent.info.start_time == 1767323045000 and parent.info.end_time == 1767323105000
    children = [r for r in runs_of(store) if r.info.run_id != parent_id]
    assert {r.info.run_name for r in children} == {"trajectory/baseline", "topk/k=5"}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        cond = child.data.params["condition"]
        expect = frame[frame.condition == cond].groupby("cycle").validity.mean()
        logged = history(client, child.info.run_id, "validity")
        assert logged == [(c, pytest.approx(v)) for c, v in expect.items()]
        assert [s for s, _ in history(client, child.info.run_id, "novelty")] == [2, 3]  # no NaN
        assert "trial" not in child.data.metrics
    files = {a.path for a in client.list_artifacts(parent_id)}
    assert files == {"config.toml", "metrics.parquet", "claims.json", "run.json"}


@needs_mlflow
def test_sweep_logs_one_nested_run_per_point_with_its_config(tmp_path, store) -> None:
    out = tmp_path / "s"
    args = ["sweep", "--set", "loop.top_k=1,5", "--set", "trials=2", "--workers", "1"]
    args += ["--set", f"loop.cycles={CYCLES}", "--out", str(out), "--track", "mlflow"]
    cfg = tmp_path / "base.toml"
    cfg.write_text(f'[tracking]\nuri = "{store}"\nexperiment = "grid"\n')
    result = CliRunner().invoke(app, [args[0], str(cfg), *args[1:]])
    assert result.exit_code == 0, result.output
    runs = runs_of(store, "grid")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    points = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["loop.top_k"] for r in points) == ["1", "5"]
    client = MlflowClient(tracking_uri=store)
    for point in points:
        steps = [s for s, _ in history(client, point.info.run_id, "fitness")]
        assert steps == list(range(1, CYCLES + 1))
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.json", "points", "metrics.parquet"} <= files


@needs_mlflow
def test_a_loop_directory_logs_its_cycles_and_claims(tmp_path, store) -> None:
    out = tmp_path / "loop"
    out.mkdir()
    pd.DataFrame({"cycle": [1, 2], "validity": [0.25, 0.5], "n_ok": [1, 2]}).to_parquet(
        out / "metrics.parquet"
    )
    (out / "claims.json").write_text("[]")
    (out / "config.toml").write_text(RealConfig().to_toml())
    (out / "run.json").write_text(json.dumps({"kind": "loop", "status": "running"}))
    run_id = log_directory(out, store, "loops", warn=pytest.fail)
    client = MlflowClient(tracking_uri=store)
    assert history(client, run_id, "n_ok") == [(1, 1.0), (2, 2.0)]
    run = client.get_run(run_id)
    assert run.data.params["novelty.threshold"] == "0.9"
    assert run.info.status == "KILLED"  # run.json never said complete


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_mlflow
def test_a_server_that_is_down_costs_a_warning_not_the_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{closed_port()}"
    out = tmp_path / "r"
    args = ["run", "--set", "trials=2", "--set", "loop.cycles=2", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--set", f"tracking.uri={uri}", "--track", "mlflow"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and uri in warnings[0] and "archrefine track" in warnings[0]
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert (out / "metrics.parquet").is_file()


@needs_mlflow
def test_track_command_logs_a_finished_directory_later(tmp_path, store) -> None:
    write_reproduce_like(tmp_path / "rep")
    runner = CliRunner()
    result = runner.invoke(app, ["track", str(tmp_path / "rep"), "--uri", store])
    assert result.exit_code == 0, result.output
    assert len(runs_of(store)) == 3  # parent + two conditions
    missing = runner.invoke(app, ["track", str(tmp_path / "nothing"), "--uri", store])
    assert missing.exit_code == 2 and "no run.json" in missing.stderr


@needs_mlflow
def test_a_bad_store_is_one_warning_and_the_run_goes_on(tmp_path, store) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[tracking]\nbackend = "mlflow"\nuri = "nosuchscheme://x"\n')
    out = tmp_path / "r"
    args = ["run", str(bad), "--set", "trials=2", "--set", "loop.cycles=2", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "nosuchscheme://x" in warnings[0]


def test_missing_mlflow_is_one_line_naming_the_extra(tmp_path, monkeypatch) -> None:
    real_find = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real_find(n)
    )
    out = tmp_path / "r"
    result = CliRunner().invoke(app, ["run", "--out", str(out), "--track", "mlflow"])
    assert result.exit_code == 2
    expected = "error: --track mlflow needs MLflow: pip install 'archrefine[track]'"
    assert result.stderr.strip() == expected
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tracking.backend=wandb"], "tracking.backend: 'wandb' is not one of none, mlflow"),
        (["tracking.server=x"], "tracking.server: unknown key"),
    ],
)
def test_tracking_section_is_validated_like_the_others(overrides, message) -> None:
    for model in (Config, RealConfig):
        with pytest.raises(ConfigError, match=message):
            load_config(None, overrides, model=model)


@pytest.mark.parametrize(
    "command", [["run"], ["reproduce"], ["sweep", "--set", "loop.top_k=1,2"], ["loop"]]
)
def test_every_tracked_command_checks_track_before_writing(tmp_path, command) -> None:
    pytest.importorskip("datasketch")  # loop needs the real extra before it reads --track
    out = tmp_path / "x"
    result = CliRunner().invoke(app, [*command, "--out", str(out), "--track", "nope"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: --track: 'nope' is not one of none, mlflow"
    assert not out.exists()
