"""Sandbox configuration and validation: fast, no worker processes, no torch needed."""

from __future__ import annotations

import dataclasses

import pytest

from archrefine.sandbox import sandbox, workers
from archrefine.sandbox.sandbox import (
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
    sandbox.bwrap_config.cache_clear()
    monkeypatch.setattr(workers.shutil, "which", lambda name: None)
    try:
        assert isolation_level() == "rlimits+audit"
        with pytest.raises(SandboxError, match="bwrap is not installed"):
            isolation_level("bwrap")
    finally:
        monkeypatch.undo()
        sandbox.bwrap_config.cache_clear()


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
        ("seed", 2**64, r"train.seed: 18446744073709551616 is not an integer in \[0, 2\*\*63\)"),
        ("seed", -1, r"train.seed: -1 is not an integer in \[0, 2\*\*63\)"),
        ("seed", 1.5, r"train.seed: 1.5 is not an integer"),
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


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 985 + b"]" * 985,
        b'{"status": "ok", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"status": "ok", "params": ' + b"9" * 5000 + b"}",
        b'{"a": [1], "b": [2]}',
        b"[1, 2]",
        b"not json",
        b"x" * (2 << 20),
    ],
)
def test_hostile_reply_lines_parse_to_none_never_raise(raw: bytes) -> None:
    assert sandbox.parse_reply(raw) is None


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    raw = b'{"status": "ok", "reason": "[[{{ \\" ]", "preds": [1, 2]}'
    assert sandbox.parse_reply(raw) == {"status": "ok", "reason": '[[{{ " ]', "preds": [1, 2]}


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ({"status": "ok", "params": -1}, "crashed"),
        ({"status": "ok", "params": True}, "crashed"),
        ({"status": "ok", "params": 1.5}, "crashed"),
        ({"status": "ok", "params": 3, "preds": [0, 1, True, 0]}, "crashed"),
        ({"status": "ok", "params": 3, "preds": [0, 1, 99, 0]}, "crashed"),
        ({"status": "ok", "params": 3, "preds": [0, 1, 1.0, 0]}, "crashed"),
        ({"status": "ok", "params": 3, "preds": None}, "crashed"),
        ({"status": "ok", "reason": 5, "params": 3}, "crashed"),
        ("not a dict", "crashed"),
        ({"status": "timeout", "params": 10, "reason": "\x1b[2J\x00" * 300}, "timeout"),
    ],
)
def test_every_outcome_field_is_validated(reply: object, status: str) -> None:
    y_val = [0, 1, 2, 0] if isinstance(reply, dict) and "preds" in reply else None
    out = make_outcome(reply, y_val, 0.0, "x", classes=10)
    assert out.status == status and out.params is None and out.accuracy is None
    assert out.reason.isprintable() and len(out.reason) <= 200


def test_parameter_counts_of_any_size_survive_and_logs_are_printable() -> None:
    reply = {"status": "ok", "params": 2**200, "log": "a\x1b[31mb\nc\x00"}
    out = make_outcome(reply, None, 0.0, "x")
    assert out.params == 2**200 and type(out.params) is int
    assert out.log == "a?[31mb\nc?"


def test_memory_limits_beyond_reason_are_refused() -> None:
    with pytest.raises(ValueError, match="memory_mb: 100000000000000000000 is not an integer in"):
        run_code("class Net: pass", memory_mb=10**20)


def test_the_worker_view_holds_torch_and_numpy_but_no_dataset_package() -> None:
    from archrefine.sandbox import confine

    names = set().union(*confine.allowed_entries().values())
    assert {"torch", "numpy"} <= names
    assert not {n for n in names if n.split(".")[0].split("-")[0] in confine.DATA_PACKAGES}
    view = confine.bwrap_view(confine.python_prefixes())
    hidden = {view[i + 1] for i, a in enumerate(view) if a == "--tmpfs"}
    for site in confine.allowed_entries():
        assert site in hidden  # every site directory is emptied, then refilled from the list


@pytest.mark.parametrize(("maker", "what"), [("new_cgroup", "memory"), ("new_cpu_cgroup", "cpu")])
def test_a_cgroup_that_cannot_be_made_is_a_sandbox_error(
    monkeypatch: pytest.MonkeyPatch, maker: str, what: str
) -> None:
    from archrefine.sandbox import confine
    from archrefine.sandbox.pool import SandboxPool

    def refuse(name: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(confine, maker, refuse)
    with pytest.raises(SandboxError, match=f"cannot create a {what} cgroup for a worker"):
        SandboxPool(1, isolation="rlimits")


def test_cgroup_files_are_read_as_the_kernel_writes_them(tmp_path) -> None:
    from archrefine.sandbox.confine import Cgroup

    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (tmp_path / "memory.usage_in_bytes").write_text("1048576\n")
    v1 = Cgroup(str(tmp_path), 1)
    assert (v1.oom_kills(), v1.usage()) == (3, 1 << 20)
    v1.set_limit(5 << 20)
    assert (tmp_path / "memory.limit_in_bytes").read_text() == str(5 << 20)
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\n")
    (tmp_path / "memory.current").write_text("2048\n")
    v2 = Cgroup(str(tmp_path), 2)
    assert (v2.oom_kills(), v2.usage()) == (2, 2048)


def test_pools_of_dead_processes_are_swept(tmp_path, monkeypatch) -> None:
    """A host killed with -9 cannot close its pool; the next pool removes what it left (the
    training inputs and candidates' sources), never a live process's or a recent one's."""
    import os
    import subprocess
    import tempfile
    import time

    from archrefine.sandbox import pool

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    old = time.time() - 3600
    made = {}
    for name, pid, mtime in [
        ("dead", gone.pid, old),
        ("recent", gone.pid, time.time()),
        ("alive", os.getpid(), old),
    ]:
        root = tmp_path / f"archrefine-sandbox-{pid}-{name}"
        (root / "in" / "d" / "d").mkdir(parents=True)
        (root / "in" / "data-x.npz").write_bytes(b"x")
        os.utime(root / "in", (mtime, mtime))
        made[name] = root
    pool._sweep_stale_roots()
    assert not made["dead"].exists()
    assert made["recent"].exists() and made["alive"].exists()
