"""`archrefine robustness`: parameters and moves, seeds, aggregation, Morris, resume, the CLI."""

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archrefine.cli.commands import app
from archrefine.core.config import Config
from archrefine.experiments import robustness as rb
from archrefine.experiments.robustness_report import aggregate, scalar

DOC = Path(__file__).resolve().parents[1] / "docs" / "model.md"
TWO = ("generator.base_logit", "schedule.period")
TINY = {"loop.population": 20, "loop.cycles": 12}  # fewer top-k conditions, shorter runs
SMALL = rb.Settings(seeds=2, trials=3, perturb=0.15, params=TWO, trajectories=2, morris_trials=3)


def test_every_fitted_or_chosen_number_of_the_model_doc_is_a_free_parameter():
    rows = re.findall(r"^\| `([\w.]+)`[^|]*\| [^|]+ \| (fitted|chosen)", DOC.read_text(), re.M)
    assert len(rows) >= 10
    free = rb.free_parameters()
    for key, _ in rows:
        if isinstance(rb.get(Config(), key), (int, float)):  # loop.archive is a choice of kind
            assert key in free, key


def test_moves_are_relative_clipped_and_integer_where_the_config_says():
    base = Config().with_overrides({"generator.ceiling": 0.97, "schedule.period": 4})
    assert rb.moved(base, "generator.base_logit", 0.85)[0] == pytest.approx(1.34 * 0.85)
    assert rb.moved(base, "generator.ceiling", 1.15) == (1.0, "clipped")  # le=1
    assert rb.moved(base, "schedule.period", 0.85)[0] == 3  # 3.4 → 3
    assert rb.moved(base, "schedule.period", 1.15)[0] == 5  # 4.6 → 5
    assert rb.moved(base, "fitness.k", 1.15)[0] is None  # 1.15 rounds back to 1
    maxed = base.with_overrides({"schedule.max_rate": 1.0})
    assert rb.moved(maxed, "schedule.max_rate", 1.15)[0] is None  # already at its ceiling
    zero = base.with_overrides({"generator.familiarity": 0.0})
    assert rb.moved(zero, "generator.familiarity", 0.85)[0] is None


def test_seeds_derive_from_the_root_never_the_calibration_seed_and_ignore_the_count():
    def seeds(root, n):
        jobs, _ = rb.plan(Config(seed=root), rb.Settings(seeds=n, trials=2, perturb=0))
        return [j.config.seed for j in jobs]

    three, five = seeds(0, 3), seeds(0, 5)
    assert five[:3] == three and len(set(five)) == 5
    assert set(seeds(1, 3)).isdisjoint(three)
    assert set(five).isdisjoint(rb.CALIBRATION_SEEDS) and rb.CALIBRATION_SEED == 12345


def test_a_derived_seed_that_lands_on_a_calibration_seed_is_derived_again(monkeypatch):
    drawn = iter([rb.CALIBRATION_SEED, 2, 77])
    monkeypatch.setattr(rb, "point_seed", lambda root, identity: next(drawn))
    assert rb.derived_seed(0, kind="seed", index=0) == 77


def test_a_perturbed_job_moves_one_parameter_and_morris_jobs_stay_in_the_box():
    jobs, info = rb.plan(Config(), SMALL)
    kinds = [j.kind for j in jobs]
    assert kinds.count("seed") == 2 and kinds.count("perturb") == 4
    assert kinds.count("morris") == 2 * (len(TWO) + 1)
    base = Config().model_dump()
    for j in (j for j in jobs if j.kind == "perturb"):
        cfg = j.config.model_dump()
        section, name = j.meta["param"].split(".")
        assert cfg[section][name] == info["parameters"][j.meta["param"]][j.meta["direction"]]
        cfg[section][name] = base[section][name]
        assert {**cfg, "seed": 0, "trials": 100} == base
    for j in (j for j in jobs if j.kind == "morris"):
        assert 1.34 * 0.85 - 1e-9 <= j.config.generator.base_logit <= 1.34 * 1.15 + 1e-9
        assert j.config.schedule.period in (3, 4, 5) and j.config.trials == 3


def _claim(cid, holds, value):
    return {"id": cid, "holds": holds, "confidence": 0.5, "scalar_name": "x", "scalar": value}


def test_aggregation_of_known_verdicts_and_morris_of_a_known_function():
    settings = rb.Settings(seeds=4, trials=2, perturb=0.15, params=TWO, trajectories=4)
    jobs, info = rb.plan(Config(), settings)
    names = info["problem"]["names"]
    x = info["morris_x"]
    fails_at = {("generator.base_logit", "+")}
    results = {}
    for j in jobs:
        if j.kind == "seed":
            claims = [_claim("C3", j.meta["index"] != 2, 0.05), _claim("C6", None, 10)]
        elif j.kind == "perturb":
            ok = (j.meta["param"], j.meta["direction"]) not in fails_at
            claims = [_claim("C3", ok, 0.05), _claim("C6", None, 10)]
        else:  # C3's scalar depends on base_logit only, linearly
            a = x[j.meta["index"]][names.index("generator.base_logit")]
            claims = [_claim("C3", a < 1.3, 2 * a), _claim("C6", None, None)]
        results[j.name] = {**j.meta, "claims": claims}
    out = aggregate(settings, jobs, results, info)
    c3, c6 = out["claims"]
    assert (c3["seeds"], c3["held"], c3["share_seeds"]) == (4, 3, 0.75)
    assert c3["neighbourhood"]["generator.base_logit"] == {"-": True, "+": False}
    assert c3["share_neighbourhood"] == 0.75 and c3["robust"] is False
    assert c6["seeds"] == 0 and c6["share_seeds"] is None  # never measured
    mor = out["sensitivity"]["outputs"]
    mu = mor["C3"]["indices"]
    assert mu["generator.base_logit"]["mu_star"] > 0 and mu["generator.base_logit"]["mu"] > 0
    assert mu["schedule.period"]["mu_star"] == 0
    assert "skipped" in mor["C6"]
    json.dumps(out)  # plain JSON all the way down


def test_scalars_from_old_and_new_measured_shapes():
    assert scalar("C1", {"boundaries": [5.5, 8.5, 15.5], "ci90": []}) == ("boundaries", 3.0)
    assert scalar("C2", -0.98) == ("levels_r", -0.98)
    assert scalar("C1", {"count": 2, "boundaries": [7.5, 15.5]}) == ("count", 2.0)
    assert scalar("C2", {"levels_r": -0.9, "changes_r": -0.7}) == ("levels_r", -0.9)
    assert scalar("C3", {"constant_loss": 0.05, "linear_loss": 0.16}) == ("constant_loss", 0.05)
    assert scalar("C3", {"constant": 0.053, "linear": 0.16}) == ("constant", 0.053)
    assert scalar("C3", {"loss": {"constant": 0.06, "linear": 0.1}}) == ("loss", 0.06)
    assert scalar("C4", {"kept": 0.92, "validity_share": 0.99}) == ("kept", 0.92)
    assert scalar("C7", {"validity_rise": 9, "novelty_fall": 7}) == ("lag", 2.0)
    assert scalar("C7", {"lag": 2.3, "ci90": [2.0, 2.6]}) == ("lag", 2.3)
    assert math.isnan(scalar("C6", "needs the topk experiment")[1])


def test_a_real_study_writes_its_files_and_resume_reruns_only_missing_jobs(tmp_path):
    out = tmp_path / "rob"
    calls = []

    def counting(config_json):
        calls.append(config_json)
        return rb.evaluate_config(config_json)

    base = Config().with_overrides(TINY)
    first = rb.run_robustness(base, SMALL, out, workers=1, runner=counting)
    assert len(calls) == 12
    data = json.loads((out / "robustness.json").read_text())
    assert data == json.loads(json.dumps(first))
    assert [c["id"] for c in data["claims"]] == [f"C{i}" for i in range(1, 8)]
    for c in data["claims"]:
        assert {
            "id",
            "seeds",
            "held",
            "share_seeds",
            "neighbourhood",
            "share_neighbourhood",
        } <= set(c)
        assert set(c["neighbourhood"]) == set(TWO)
        assert all(set(v) == {"-", "+"} for v in c["neighbourhood"].values())
        assert c["seeds"] == 2 and 0 <= c["share_seeds"] <= 1
    assert set(data["sensitivity"]["outputs"]) == {f"C{i}" for i in range(1, 8)}
    assert len(data["seeds"]) == 2 and data["trials"] == 3
    assert (out / "robustness.png").stat().st_size > 5000
    assert "| C3 |" in (out / "robustness.md").read_text()
    assert json.loads((out / "run.json").read_text())["status"] == "complete"

    (out / "jobs" / "seed-001.json").unlink()
    (out / "jobs" / "morris-0002.json").write_text('{"name": "morris-00')  # a torn write
    calls.clear()
    again = rb.run_robustness(base, SMALL, out, workers=1, resume=True, runner=counting)
    assert len(calls) == 2
    assert again == first  # the same seeds, so the same verdicts
    with pytest.raises(rb.StoreError, match="own settings"):
        rb.run_robustness(base, rb.Settings(seeds=3), out, resume=True)


def _cli(*args):
    return CliRunner().invoke(app, ["robustness", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0"], "--seeds: must be at least 1 (got 0)"),
        (["--trials", "0"], "--trials: must be at least 1 (got 0)"),
        (["--perturb", "1"], "--perturb: must be in [0, 1) (got 1.0)"),
        (["--perturb", "-0.1"], "--perturb: must be in [0, 1) (got -0.1)"),
        (["--param", "generator.nope"], "--param generator.nope: not a free parameter"),
        (["--param", "loop.top_k"], "--param loop.top_k: not a free parameter"),
        (["--trajectories", "1"], "--trajectories: must be at least 2"),
        (["--resume", "nowhere"], "nowhere: no robustness study to resume"),
        (["--resume", "nowhere", "--seeds", "3"], "drop --seeds"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = _cli(*args, "--out", str(tmp_path / "o")) if "--resume" not in args else _cli(*args)
    assert result.exit_code == 2, result.output
    text = result.stderr.strip()
    assert text.startswith("error: ") and message in text and "\n" not in text, text
    assert not (tmp_path / "o").exists()


def test_cli_seeds_only_skips_sensitivity(tmp_path):
    out = tmp_path / "r"
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    result = _cli("--seeds", "2", "--trials", "3", "--perturb", "0", *sets, "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "robustness.json").read_text())
    assert "skipped" in data["sensitivity"] and len(data["seeds"]) == 2
    assert all(c["share_neighbourhood"] is None for c in data["claims"])
    assert all(c["robust"] is not True for c in data["claims"])  # no neighbourhood: not judged
    assert "2 jobs ran" in result.stderr
