"""Rough edges, round 14: a loop whose generator cannot be built leaves --out as it was; an
unreadable candidate store is a warning, not silence; validation without training exercises a
training step; scripts print "–" for null numbers; absurd simulator values and `--set
section={...}` are one line or merged, never NaN or silently dropped keys."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from test_rough_edges_more import checksums, invoke, one_line_error

from archrefine.core.config import Config, ConfigError, load_config

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# connection refused at once: port 9 (discard) has no listener here
UNREACHABLE = ["--set", 'generator.kind="openai"', "--set",
               'generator.base_url="http://127.0.0.1:9/v1"', "--set", "generator.max_retries=0",
               "--set", "generator.timeout_s=2"]  # fmt: skip


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def own_key(monkeypatch, tmp_path):
    """A run-signing key of the test's own, not the user's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


# ---- 1. a loop whose generator cannot be built -------------------------------------------------


def test_a_loop_whose_generator_cannot_be_built_leaves_out_as_it_was(tmp_path, own_key):
    pytest.importorskip("openai")
    out = tmp_path / "loop"
    for _ in range(2):  # the retry fails the same way, not with "already holds a run"
        one_line_error(invoke("loop", *UNREACHABLE, "--out", out), "cannot reach", "127.0.0.1:9")
        assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(invoke("loop", *UNREACHABLE, "--out", empty), "cannot reach")
    assert list(empty.iterdir()) == []


def test_a_forced_start_whose_generator_fails_keeps_the_old_results(tmp_path, own_key):
    pytest.importorskip("openai")
    from test_report_html import make_loop

    out = make_loop(tmp_path / "loop", cycles=2)
    before = checksums(out)
    one_line_error(invoke("loop", *UNREACHABLE, "--out", out, "--force"), "cannot reach")
    assert checksums(out) == before
    # a refused --out is said before the generator is built (no model load, no server asked)
    one_line_error(invoke("loop", *UNREACHABLE, "--out", out), "already holds a run")


# ---- 2. report on a loop whose candidate store cannot be read ----------------------------------


@pytest.fixture(scope="module")
def loop_dir(tmp_path_factory) -> Path:
    from test_report_html import make_loop

    return make_loop(tmp_path_factory.mktemp("loop") / "loop", cycles=2)


@pytest.mark.parametrize("damage", ["directory", "broken link", "corrupt"])
def test_an_unreadable_candidate_store_is_one_warning_and_the_report_is_written(
    loop_dir, tmp_path, damage
):
    target = tmp_path / "d"
    shutil.copytree(loop_dir, target)
    db = target / "candidates.sqlite"
    for extra in ("", "-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    if damage == "directory":
        db.mkdir()
    elif damage == "broken link":
        db.symlink_to(tmp_path / "nowhere.sqlite")
    else:
        db.write_bytes(b"not sqlite" * 100)
    result = invoke("report", target)
    assert result.exit_code == 0, result.output
    warnings = [x for x in result.output.splitlines() if x.startswith("warning: ")]
    assert len(warnings) == 1 and str(db) in warnings[0], result.output
    assert "without the candidates" in warnings[0]
    assert (target / "report.html").stat().st_size > 0
    assert not (tmp_path / "nowhere.sqlite").exists()  # a broken link is not followed to create


def test_a_readable_store_gives_no_warning(loop_dir, tmp_path):
    target = tmp_path / "d"
    shutil.copytree(loop_dir, target)
    result = invoke("report", target)
    assert result.exit_code == 0 and "warning" not in result.output, result.output


# ---- 3. validation without training exercises a training step ----------------------------------

HEAD = (
    "import torch\nimport torch.nn as nn\n\n"
    "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
    "        self.f = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))\n\n"
)
TRAIN_ONLY = {
    "raises in train mode": HEAD + "    def forward(self, x):\n        if self.training:\n"
    "            raise RuntimeError('boom only when training')\n        return self.f(x)\n",
    "backward fails": "class Bad(__import__('torch').autograd.Function):\n"
    "    @staticmethod\n    def forward(ctx, x):\n        return x * 1\n\n"
    "    @staticmethod\n    def backward(ctx, g):\n        raise ValueError('no backward here')\n\n"
    + HEAD
    + "    def forward(self, x):\n        return Bad.apply(self.f(x))\n",
    "wrong shape in train mode": HEAD + "    def forward(self, x):\n        y = self.f(x)\n"
    "        return y[:, :5] if self.training else y\n",
    "nothing trainable": HEAD + "    def forward(self, x):\n        return self.f(x).detach()\n",
}
REASONS = {
    "raises in train mode": "boom only when training",
    "backward fails": "no backward here",
    "wrong shape in train mode": "train mode returned shape (2, 5)",
    "nothing trainable": "nothing to train",
}


@pytest.mark.torch
def test_validation_without_training_runs_a_train_mode_forward_and_backward():
    pytest.importorskip("torch")
    from archrefine.sandbox.sandbox import SandboxPool

    with SandboxPool(1, timeout_s=20) as pool:
        ok = pool.run(HEAD + "    def forward(self, x):\n        return self.f(x)\n",
                      input_shape=(3, 8, 8))  # fmt: skip
        assert ok.status == "ok", ok
        bn = HEAD.replace("nn.Flatten(), ", "nn.BatchNorm2d(3), nn.Flatten(), ")
        ok = pool.run(bn + "    def forward(self, x):\n        return self.f(x)\n",
                      input_shape=(3, 8, 8), batch=1)  # fmt: skip
        assert ok.status == "ok", ok  # batch 1 is checked in train mode on 2 (BatchNorm)
        for name, source in TRAIN_ONLY.items():
            out = pool.run(source, input_shape=(3, 8, 8))
            assert out.status == "invalid" and REASONS[name] in out.reason, (name, out)


# ---- 4. scripts print "–" for null numbers ------------------------------------------------------


def _eval_row(**nulls) -> dict:
    row = {
        "run": "r", "generator": "paper", "final_validity": 0.5,
        "final_validity_band": [0.4, 0.6], "observed_final_validity": 0.52,
        "observed_validity_se": 0.01, "validity_error_pp": -2.0, "validity_inside": True,
        "diversity_kept": 0.8, "diversity_kept_band": [0.7, 0.9],
        "observed_diversity_kept": 0.82, "observed_kept_se": 0.02, "kept_error_pp": -2.0,
        "kept_inside": True, "validity_band_coverage": 1.0, "diversity_band_coverage": 1.0,
        "heldout_error": None, "cpu_seconds": 1.0, "fit_validity_error_pp": 1.0,
    }  # fmt: skip
    return row | nulls


def test_forecast_eval_tables_print_a_dash_for_null(tmp_path):
    forecast_eval = script("forecast_eval")
    nulls = {"observed_kept_se": None, "observed_diversity_kept": None, "kept_error_pp": None,
             "diversity_kept": None, "diversity_kept_band": [None, None],
             "validity_band_coverage": None}  # fmt: skip
    rows = json.loads(json.dumps([_eval_row(), _eval_row(run="s", **nulls)]))
    text = forecast_eval.table(rows, 6, "cmd")
    line = next(x for x in text.splitlines() if x.startswith("| s |"))
    assert "| – (–) | – ± – | – |" in line and "| – / 100% |" in line, line
    for n in (6, 10):
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "eval.json").write_text(json.dumps(rows))
    compared = forecast_eval.compare_table([f"6={tmp_path / '6'}", f"10={tmp_path / '10'}"])
    assert "| s | -2.0 / -2.0 | – / – |" in compared


def test_rise_and_fall_and_update_readme_print_a_dash_for_null(tmp_path):
    pd = pytest.importorskip("pandas")
    rise_and_fall = script("rise_and_fall")
    params = {
        "rmse": {"validity": None, "mean_accuracy": 0.1},
        "loo_rmse": {"validity": 0.2, "mean_accuracy": None},
        "params": {"generator.base_logit": 1.0},
        "stderr": {"generator.base_logit": None},
    }
    empty = pd.DataFrame({"cycle": [1], "validity": [0.5], "column": ["x"], "predicted": [0.5]})
    run = {"params": params, "fitted": empty, "residuals": empty, "loo": empty}
    text = rise_and_fall.tables({"m": run})
    assert "| m | `generator.base_logit` | 1 | – |" in text
    assert "| m | validity | – | 0.200 |" in text
    update_readme = script("update_readme")
    paper, robust = tmp_path / "paper", tmp_path / "robust"
    paper.mkdir(), robust.mkdir()
    (paper / "claims.json").write_text(json.dumps([{"id": "C1", "holds": None}]))
    study = {"claims": [{"id": "C1", "held": 0, "seeds": 0, "share_seeds": None,
                         "share_neighbourhood": None, "robust": None}],
             "trials": 2, "perturb": 0.1, "seeds": []}  # fmt: skip
    (robust / "robustness.json").write_text(json.dumps(study))
    (robust / "run.json").write_text(json.dumps({"command": "archrefine robustness"}))
    assert "| C1 | – | – | 0/0 (–) | – | – |" in update_readme.robustness_section(paper, robust)


# ---- 6. absurd simulator values ------------------------------------------------------------------


@pytest.mark.parametrize(
    "override",
    ["generator.base_logit=-1e308", "generator.base_logit=1e3", "generator.bonus_max=1e308",
     "generator.bonus_rate=1e308", "generator.familiarity=1e308",
     "generator.learned.lr=1e308", "generator.learned.pretrain_lr=1e9"],
)  # fmt: skip
def test_absurd_simulator_values_are_one_line_naming_the_key(override, tmp_path):
    out = tmp_path / "o"
    key = override.partition("=")[0]
    one_line_error(invoke("run", "--set", override, "--out", out), f"error: {key}: ")
    assert not out.exists()


def test_the_bounds_admit_every_calibration_range_and_shipped_config():
    from archrefine.experiments import calibrate
    from archrefine.experiments.drift_fit import BOX, SET_BOX
    from archrefine.experiments.forecast_fit import FREE

    boxes = [calibrate.PAPER_PARAMS, calibrate.LEARNED_PARAMS, calibrate.DRIFT_PARAMS, BOX,
             SET_BOX, *FREE.values()]  # fmt: skip
    for box in boxes:
        for key, (lo, hi) in box.items():
            Config().with_overrides({key: lo}), Config().with_overrides({key: hi})
    configs = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(configs.glob("*.toml")):
        load_config(path)  # the simulator's own configs still load


# ---- 7. --set section={...} --------------------------------------------------------------------


def test_a_table_for_a_section_sets_its_keys_and_keeps_the_others(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[generator]\nbase_logit = 2.5\n\n[generator.learned]\nlayers = 3\n")
    sets = ["generator={bonus_max=4.0, learned={heads=2}}", "loop.cycles=5", "loop={top_k=3}"]
    cfg = load_config(path, sets)
    assert cfg.generator.base_logit == 2.5 and cfg.generator.bonus_max == 4.0
    assert (cfg.generator.learned.layers, cfg.generator.learned.heads) == (3, 2)
    assert (cfg.loop.cycles, cfg.loop.top_k) == (5, 3)
    with pytest.raises(ConfigError, match=r"^loop\.bogus: unknown key$"):
        load_config(None, ["loop={cycles=3, bogus=1}"])
    result = invoke("config", path, "--set", 'generator={kind="paper"}')
    assert result.exit_code == 0 and "base_logit = 2.5" in result.output, result.output
