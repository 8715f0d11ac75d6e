"""scripts/forecast_eval.py's comparison of forecast errors with each run's own noise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "forecast_eval.py"
spec = importlib.util.spec_from_file_location("forecast_eval", SCRIPT)
forecast_eval = importlib.util.module_from_spec(spec)
spec.loader.exec_module(forecast_eval)


def _row(run: str, v_err: float, v_se: float, k_err: float, k_se: float) -> dict:
    return {"run": run, "validity_error_pp": v_err, "observed_validity_se": v_se,
            "kept_error_pp": k_err, "observed_kept_se": k_se}  # fmt: skip


def test_noise_line_names_the_runs_too_noisy_to_judge_and_counts_real_errors():
    rows = [
        _row("quiet, small errors", 1.0, 0.004, 0.5, 0.001),  # both beyond 2 SE (0.8, 0.2 pp)
        _row("quiet, exact", 0.1, 0.004, 0.1, 0.001),  # neither
        _row("noisy kept", 2.0, 0.004, -9.0, 0.067),  # SE 6.7 pp ≥ 1.5: too noisy; 9 < 13.4
        _row("noisy validity", 6.0, 0.03, 0.0, 0.001),  # SE 3 pp ≥ 2.5; 6 < 6: not beyond
    ]
    line = forecast_eval.noise_line(rows)
    assert "on 2 of 4 (noisy kept; noisy validity)" in line
    assert "final validity 2 of 4, diversity kept 1 of 4" in line


def test_noise_line_when_every_run_is_quiet():
    line = forecast_eval.noise_line([_row("a", 1.0, 0.001, 1.0, 0.001)])
    assert "tolerance (2.5 pp of validity or 1.5 pp of diversity kept) on none." in line


def test_compare_table_lines_up_runs_across_fit_lengths(tmp_path):
    import json

    for n, errs in ((6, [(20.0, -1.0), (1.0, 0.5)]), (10, [(4.0, -0.5), (-0.5, 0.2)])):
        rows = [_row(name, v, 0.0, k, 0.0) for name, (v, k) in zip(("slow", "default"), errs)]
        (tmp_path / str(n)).mkdir()
        (tmp_path / str(n) / "eval.json").write_text(json.dumps(rows))
    text = forecast_eval.compare_table([f"6={tmp_path / '6'}", f"10={tmp_path / '10'}"])
    assert "| slow | +20.0 / +4.0 | -1.0 / -0.5 |" in text
    assert "| default | +1.0 / -0.5 | +0.5 / +0.2 |" in text
    assert "| within ±5 pp / ±3 pp of 2 runs (mean absolute error) | 1 (10.5) / 2 (2.2) " in text


def test_prior_sd_experiment_needs_its_own_out_and_widens_the_fits_prior(monkeypatch):
    """`--prior-sd` refuses to run into the default directories (it writes no factors, and
    must not mix with the shipped ones), and the width it sets is the one the fit reads."""
    import numpy as np
    import pytest

    from archrefine.experiments import forecast_fit

    for argv in (["--develop", "--prior-sd", "0.4"], ["--prior-sd", "0", "--out", "x"]):
        monkeypatch.setattr("sys.argv", ["forecast_eval.py", *argv])
        with pytest.raises(SystemExit) as done:
            forecast_eval.main()
        assert done.value.code == 2
    u = forecast_fit.prior_centre("paper") + 0.2
    assert np.allclose(forecast_fit._penalty("paper", u), 1.0)  # 0.2 of the range: one width
    monkeypatch.setattr(forecast_fit, "PRIOR_SD", 0.4)
    assert np.allclose(forecast_fit._penalty("paper", u), 0.5)
