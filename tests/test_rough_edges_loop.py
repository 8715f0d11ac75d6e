"""Bad input to the real loop's commands (`loop`, `serve`, `config --loop`): a config or prompt
template that is a FIFO, a device or huge; a blank template, or one that never shows the
references; a sampling temperature so small that it overflows; a device torch does not know;
a base_url that is no URL; a bad `serve --seed`. Each is refused before anything is written,
as one `error: ...` line naming the problem (exit status 2, no traceback), and none hangs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_rough_edges_more import invoke, one_line_error

from archrefine.core.config import ConfigError
from archrefine.real.config import RealConfig

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in its own process, with a timeout: an input that blocks a read fails the test
    instead of hanging the suite."""
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "archrefine", *map(str, args)], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_fifo_or_device_as_config_or_template_is_refused_without_hanging(tmp_path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args, expected in (
        (("config", "--loop", fifo), "fifo: cannot read config (not a regular file)"),
        (("loop", fifo), "fifo: cannot read config (not a regular file)"),
        (("config", "--loop", "/dev/zero"), "/dev/zero: cannot read config (not a regular file)"),
        (("loop", "--set", f"prompt.template={fifo}", "--out", tmp_path / "run"),
         "prompt.template: cannot read"),
    ):  # fmt: skip
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert expected in result.stderr.strip().splitlines()[-1], result.stderr
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_a_blank_huge_or_reference_less_template_is_refused(tmp_path) -> None:
    from archrefine.real.prompts import template_text

    empty, huge, plain = tmp_path / "empty.txt", tmp_path / "huge.txt", tmp_path / "plain.txt"
    empty.write_text(" \n\n")
    huge.write_text("$references " * 500_000)  # 6 MB
    plain.write_text("Write a network for $dataset.\n")
    with pytest.raises(ConfigError, match="empty.txt is empty"):
        template_text(str(empty))
    with pytest.raises(ConfigError, match="larger than"):
        template_text(str(huge))
    with pytest.raises(ConfigError, match="has no \\$references"):
        template_text(str(plain), references=3)
    assert template_text(str(plain), references=0)  # no references to show: fine
    with pytest.raises(ConfigError, match="cannot read /dev/zero"):
        template_text("/dev/zero")
    result = invoke("loop", "--set", f"prompt.template={plain}", "--out", tmp_path / "run")
    one_line_error(result, "prompt.template:", "$references")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("generator.learned.temperature", 1e-300, "generator.learned.temperature"),
        ("generator.learned.temperature_span", 1e300, "generator.learned.temperature_span"),
        ("generator.temperature", 1e-300, "generator.temperature"),
        ("generator.device", "tpu", "not a device"),
        ("generator.device", "cuda:-1", "not a device"),
        ("generator.device", "", "not a device"),
        ("generator.base_url", "notaurl", "generator.base_url: not an http"),
        ("generator.base_url", "ftp://host/v1", "generator.base_url: not an http"),
        ("generator.base_url", "http://127.0.0.1:abc/v1", "generator.base_url: not a URL"),
    ],
)
def test_values_no_run_can_use_are_config_errors(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        RealConfig().with_overrides({key: value})


def test_good_devices_and_urls_still_pass() -> None:
    for key, value in (("generator.device", "cuda:1"), ("generator.device", "cpu"),
                       ("generator.base_url", "https://api.openai.com/v1"),
                       ("generator.base_url", "http://[::1]:8000/v1")):  # fmt: skip
        assert RealConfig().with_overrides({key: value})


def test_serve_with_a_bad_seed_is_one_line() -> None:
    one_line_error(invoke("serve", "--seed", "-5", "--port", "0"), "seed:")


def test_a_device_this_machine_lacks_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from archrefine.real.hf import HFGenerator, build_tiny_model
    from archrefine.real.text import GeneratorUnavailable

    model = build_tiny_model(tmp_path / "tiny", steps=0)
    with pytest.raises(GeneratorUnavailable, match="generator.device: cannot use 'cuda:99'"):
        HFGenerator(model, device="cuda:99")


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--budget", "99999999999999999999"], "--budget: must be at most 100,000"),
        (["--seeds", "99999999999999999999"], "--seeds: must be at most 1,000"),
    ],
)
def test_intervene_refuses_a_budget_that_would_never_end(tmp_path, args, expected) -> None:
    result = cli("intervene", *args, "--out", tmp_path / "i", cwd=tmp_path)  # old: ran for ever
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: {expected} (got {args[1]})"
    assert not (tmp_path / "i").exists()


def test_an_empty_grounded_archive_gives_nan_novelty_without_a_warning() -> None:
    """`novelty.seed_known = false` leaves the grounded archive empty in cycle 1: every loop run
    printed `RuntimeWarning: Mean of empty slice`; the novelty is NaN, quietly."""
    import warnings

    import numpy as np

    from archrefine.real.cycle_metrics import _grounded
    from archrefine.space import KNOWN, LENGTH, to_source

    code = to_source(KNOWN["resnet"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _grounded([code, code], np.zeros((0, LENGTH), dtype=np.int16))
    assert out["mapped"] == 1.0 and np.isnan(out["grounded_novelty"])
