"""Sandbox configuration and validation: fast, no worker processes, no torch needed."""

from __future__ import annotations

import dataclasses

import pytest

from archrefine.evaluate import sandbox
from archrefine.evaluate.sandbox import (
    Outcome,
    SandboxError,
    TrainSpec,
    isolation_level,
    make_outcome,
    run_code,
)


def test_isolation_level_names_the_layers() -> None:
    assert isolation_level() in {"bwrap+audit", "rlimits+audit"}
    assert isolation_level("rlimits") == "rlimits+audit"
    assert isolation_level("rlimits", audit=False) == "rlimits"


def test_environment_variable_forces_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHREFINE_SANDBOX", "rlimits")
    assert isolation_level() == "rlimits+audit"
    monkeypatch.setenv("ARCHREFINE_SANDBOX", "docker")
    with pytest.raises(ValueError, match="ARCHREFINE_SANDBOX: 'docker' is not one of"):
        isolation_level()


def test_missing_bwrap_falls_back_or_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox._bwrap_config.cache_clear()
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    try:
        assert isolation_level() == "rlimits+audit"
        with pytest.raises(SandboxError, match="bwrap is not installed"):
            isolation_level("bwrap")
    finally:
        monkeypatch.undo()
        sandbox._bwrap_config.cache_clear()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_s": 0}, "timeout_s: 0 is not a number of seconds"),
        ({"memory_mb": 1.5}, "memory_mb: 1.5 is not an integer"),
        ({"input_shape": (3, 0)}, "input_shape: "),
        ({"classes": 0}, "classes: 0 is not an integer >= 1"),
        ({"train": TrainSpec()}, "train and data: give both"),
        ({"isolation": "docker"}, "isolation: 'docker' is not one of auto, bwrap, rlimits"),
    ],
)
def test_bad_options_raise_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_code("class Net: pass", **kwargs)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("optimizer", "adamw", "train.optimizer: 'adamw' is not one of adam, sgd"),
        ("epochs", 0, "train.epochs: 0 is not an integer >= 1"),
        ("lr", -1.0, "train.lr: -1.0 is not > 0"),
        ("batch_size", 0, "train.batch_size: 0 is not an integer >= 1"),
    ],
)
def test_trainspec_validates_its_fields(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainSpec(**{field: value})


def test_outcome_is_frozen() -> None:
    out = Outcome("ok", "ok", 1, None, 0.1, "rlimits+audit")
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.status = "invalid"  # type: ignore[misc]


def test_untrusted_replies_are_validated_and_scored_here() -> None:
    reply = {"status": "ok", "reason": "ok", "params": 5, "preds": [1, 0, 1, 1]}
    out = make_outcome(reply, [1, 1, 1, 0], 0.0, "x")
    assert (out.status, out.params, out.accuracy) == ("ok", 5, 0.5)
    fake = make_outcome(dict(reply, preds=[1, 1]), [1, 1, 1, 0], 0.0, "x")
    assert fake.status == "crashed" and fake.accuracy is None
    odd = make_outcome({"status": "great", "reason": "a\nb" * 300}, None, 0.0, "x")
    assert odd.status == "crashed" and "\n" not in odd.reason and len(odd.reason) <= 200
