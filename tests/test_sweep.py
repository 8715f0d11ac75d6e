"""Parameter sweeps (grid expansion, seeds, resume, local vs Ray) and the run catalog."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from archrefine.cli.commands import app
from archrefine.core.config import Config
from archrefine.experiments.sweep import SweepError, expand, point_seed, run_sweep

BASE = Config().with_overrides({"trials": 4, "loop.cycles": 5})
GRID = ["loop.top_k=1,2,5", "schedule.kind=cyclic,cosine"]
HAS_RAY = importlib.util.find_spec("ray") is not None


def test_expansion_is_the_grid_product_in_set_order():
    points = expand(BASE, GRID)
    assert len(points) == 6
    assert points[0].name == "loop.top_k=1,schedule.kind=cyclic"
    assert points[1].name == "loop.top_k=1,schedule.kind=cosine"
    assert points[-1].overrides == {"loop.top_k": 5, "schedule.kind": "cosine"}
    for p in points:
        assert p.config.loop.top_k == p.overrides["loop.top_k"]
        assert p.config.schedule.kind == p.overrides["schedule.kind"]
        assert p.config.seed == p.seed and p.config.trials == 4
    assert len({p.seed for p in points}) == 6 and len({p.slug for p in points}) == 6


def test_values_parse_like_overrides():
    points = expand(BASE, ["schedule.rate=0.5,1", "fitness.k=0,2", "space.dataset=cora,citeseer"])
    rate, k, dataset = zip(*(tuple(p.overrides.values()) for p in points))
    assert set(rate) == {0.5, 1.0} and all(isinstance(r, float) for r in rate)
    assert set(k) == {0, 2} and all(type(v) is int for v in k)
    assert set(dataset) == {"cora", "citeseer"}
    assert points[0].name == "schedule.rate=0.5,fitness.k=0,space.dataset=cora"


def test_seeds_depend_on_the_point_not_its_place_in_the_grid():
    small = {p.name: p.seed for p in expand(BASE, ["loop.top_k=1,2"])}
    grown = {p.name: p.seed for p in expand(BASE, ["loop.top_k=10,2,5,1"])}
    assert all(grown[name] == seed for name, seed in small.items())
    # the seed hashes the key-sorted overrides: --set order does not matter
    ab = expand(BASE, ["loop.top_k=2", "schedule.kind=cyclic"])[0]
    ba = expand(BASE, ["schedule.kind=cyclic", "loop.top_k=2"])[0]
    assert ab.seed == ba.seed
    # validated values, so 0.5 and 0.50 and 1 and 1.0 are one point
    assert point_seed(0, {"schedule.rate": 1.0}) == expand(BASE, ["schedule.rate=1"])[0].seed
    # and the sweep seed is the root
    reseeded = expand(BASE.with_overrides({"seed": 1}), ["loop.top_k=1,2"])
    assert {p.seed for p in reseeded}.isdisjoint(small.values())


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["loop.top_k"], "--set 'loop.top_k': expected dotted.key=value1,value2"),
        (["loop.top_k="], "--set 'loop.top_k=': empty value in the list"),
        (["loop.top_k=1,,2"], "--set 'loop.top_k=1,,2': empty value in the list"),
        (["loop.top_kk=1,2"], "loop.top_kk: unknown key"),
        (["loopy.top_k=1"], "loopy: unknown section"),
        (["loop.top_k=1", "loop.top_k=2"], "--set loop.top_k: given twice"),
        (["loop.top_k=1,1.0"], "point loop.top_k=1: listed twice"),
        (["loop.top_k=1,60"], "point loop.top_k=60: loop: top_k (60) must not exceed population"),
        (["schedule.kind=cyclic,cosin"], "point schedule.kind=cosin: schedule.kind: 'cosin' is"),
        ([], "a sweep needs at least one --set"),
    ],
)
def test_bad_sets_fail_in_one_line(sets, message):
    with pytest.raises(SweepError) as err:
        expand(BASE, sets)
    text = str(err.value)
    assert message in text and "\n" not in text, text


def _run(points, out, **kw):
    seen = []
    frame = run_sweep(
        BASE, points, out, on_point=lambda p, what: seen.append((p.name, what)), figure=False, **kw
    )
    return frame, dict(seen)


def test_resume_skips_finished_points_and_reruns_damaged_ones(tmp_path):
    points = expand(BASE, ["loop.top_k=1,2,5"])
    first, seen = _run(points, tmp_path / "s", workers=1)
    assert set(seen.values()) == {"ran"}
    assert list(first.columns[:2]) == ["point", "loop.top_k"] and len(first) == 3 * 4 * 5
    info = json.loads((tmp_path / "s" / "run.json").read_text())
    assert info["kind"] == "sweep" and info["status"] == "complete"
    dirs = [tmp_path / "s" / "points" / p.slug for p in points]
    (dirs[0] / "metrics.parquet").write_bytes(b"not parquet")
    (dirs[1] / "run.json").write_text("{broken")
    grown = expand(BASE, ["loop.top_k=1,2,5,10"])
    again, seen = _run(grown, tmp_path / "s", workers=1, resume=True)
    assert seen == {
        "loop.top_k=1": "ran",
        "loop.top_k=2": "ran",
        "loop.top_k=5": "skipped",
        "loop.top_k=10": "ran",
    }
    pd.testing.assert_frame_equal(again[again.point != "loop.top_k=10"], first)
    with pytest.raises(Exception, match="already holds a run"):
        _run(points, tmp_path / "s")
    _, seen = _run(points, tmp_path / "s", workers=1, force=True)  # force starts afresh
    assert set(seen.values()) == {"ran"}


def test_missing_ray_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(SweepError, match=r"pip install 'archrefine\[ray\]'"):
        run_sweep(BASE, expand(BASE, ["loop.top_k=1"]), tmp_path / "s", backend="ray")
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'archrefine[ray]')")
def test_local_and_ray_backends_give_identical_bytes(tmp_path):
    points = expand(BASE, GRID)
    serial, _ = _run(points, tmp_path / "serial", workers=1)
    local, _ = _run(points, tmp_path / "local", workers=2)
    ray, seen = _run(points, tmp_path / "ray", backend="ray", workers=2)  # starts a 2-CPU Ray
    assert set(seen.values()) == {"ran"}
    pd.testing.assert_frame_equal(local, serial)
    pd.testing.assert_frame_equal(ray, local)
    for name in ["metrics.parquet", *(f"points/{p.slug}/metrics.parquet" for p in points)]:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    assert json.loads((tmp_path / "ray" / "sweep.json").read_text())["backend"] == "ray"


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def base_toml(tmp_path):
    path = tmp_path / "base.toml"
    path.write_text("trials = 4\n[loop]\ncycles = 5\n")
    return path


def test_cli_sweep_writes_points_combined_metrics_and_figure(tmp_path, runner, base_toml):
    out = tmp_path / "runs" / "s"
    args = ["sweep", str(base_toml), "--set", "loop.top_k=1,5", "--workers", "1"]
    result = runner.invoke(app, [*args, "--set", "schedule.kind=cyclic,cosine", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "loop.top_k=5,schedule.kind=cosine" in result.stdout
    assert "4 points ran, 0 already finished" in result.stderr
    assert (out / "sweep.png").stat().st_size > 1000
    frame = pd.read_parquet(out / "metrics.parquet")
    assert frame.point.nunique() == 4 and {"loop.top_k", "schedule.kind"} <= set(frame.columns)
    assert len(list((out / "points").iterdir())) == 4
    again = runner.invoke(app, ["sweep", "--resume", str(out), "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert "0 points ran, 4 already finished" in again.stderr
    assert pd.read_parquet(out / "metrics.parquet").equals(frame)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "loop.top_k"], "expected dotted.key=value1,value2"),
        (["--set", "loop.top_k=1,2", "--backend", "dask"], "backend: 'dask' is not one of"),
        (["--resume", "nowhere"], "nowhere: no sweep to resume"),
        ([], "a sweep needs at least one --set"),
    ],
)
def test_cli_sweep_errors_are_one_line(tmp_path, runner, args, message):
    result = runner.invoke(app, ["sweep", *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_cli_runs_lists_everything_and_survives_damage(tmp_path, runner, base_toml):
    root = tmp_path / "runs"
    assert runner.invoke(app, ["run", str(base_toml), "--out", str(root / "r")]).exit_code == 0
    sweep = ["sweep", str(base_toml), "--set", "loop.top_k=1,2", "--workers", "1"]
    assert runner.invoke(app, [*sweep, "--out", str(root / "s")]).exit_code == 0
    (root / "bad").mkdir()
    (root / "bad" / "run.json").write_text("{not json")
    (root / "torn").mkdir()
    (root / "torn" / "run.json").write_text(json.dumps({"kind": "run", "status": "complete"}))
    (root / "torn" / "metrics.parquet").write_bytes(b"PAR1 garbage")
    result = runner.invoke(app, ["runs", str(root)])
    assert result.exit_code == 0, result.output
    assert "unreadable" in result.stdout and "finished" in result.stdout
    result = runner.invoke(app, ["runs", str(root), "--json"])
    assert result.exit_code == 0, result.output
    table = pd.DataFrame(json.loads(result.stdout)).set_index("name")
    assert set(table.index) == {"r", "s", "bad", "torn"}
    assert table.loc["r", "status"] == "finished" and table.loc["r", "kind"] == "run"
    assert table.loc["s", "kind"] == "sweep" and table.loc["s", "status"] == "finished"
    assert table.loc["r", "config_hash"] == table.loc["s", "config_hash"]  # same base config
    assert len(table.loc["r", "config_hash"]) == 10 and 0 <= table.loc["r", "validity"] <= 1
    assert table.loc["bad", "status"].startswith("unreadable: run.json")
    assert table.loc["torn", "status"].startswith("unreadable: metrics.parquet")
    missing = runner.invoke(app, ["runs", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such directory" in missing.stderr

    figure = tmp_path / "cmp.png"
    result = runner.invoke(app, ["compare", str(root / "r"), str(root / "s"), "-o", str(figure)])
    assert result.exit_code == 0, result.output
    assert figure.stat().st_size > 1000 and "3 trajectories" in result.stderr
    bad = runner.invoke(app, ["compare", str(root / "bad"), "-o", str(figure)])
    assert bad.exit_code == 2 and "no such file" in bad.stderr


def test_compare_reads_a_reproduce_style_long_frame(tmp_path, runner):
    from archrefine.core.catalog import trajectories
    from archrefine.core.store import write_parquet
    from archrefine.sim.loop import simulate

    frame = simulate(BASE).metrics
    long = pd.concat(
        [frame.assign(experiment="trajectory", condition="baseline"),
         frame.assign(experiment="topk", condition="k=1", fitness=9.0)]
    )  # fmt: skip
    write_parquet(tmp_path / "rep" / "metrics.parquet", long)
    ((label, sel),) = trajectories(Path(tmp_path / "rep")).items()
    assert label == "rep" and len(sel) == len(frame) and (sel.fitness <= 1).all()


def test_a_running_record_whose_process_is_gone_is_interrupted(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from archrefine.core.catalog import describe

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    for name, pid, status in (("live", os.getpid(), "running"), ("dead", int(gone), "interrupted")):
        info = {"kind": "sweep", "status": "running", "pid": pid, "host": socket.gethostname()}
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps(info))
        assert describe(tmp_path / name)["status"] == status
