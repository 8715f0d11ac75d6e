"""Real-loop evaluation on Ray: a local 2-CPU Ray instance, the real sandbox inside each task."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("torch")
ray = pytest.importorskip("ray", reason="the Ray backend needs ray (pip install 'archrefine[ray]')")

from archrefine.sandbox.pool import SandboxPool  # noqa: E402
from archrefine.sandbox.ray_backend import RayEvaluator, evaluate_one  # noqa: E402
from archrefine.sandbox.sandbox import TrainSpec  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

NET = """import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, {o}))

    def forward(self, x):
        return self.f(x)
"""
SHAPE = (3, 8, 8)
SOURCES = [NET.format(o=10), NET.format(o=7), "while True:\n    pass\n"]


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, *SHAPE)).astype("float32")
    y = rng.integers(0, 10, 64)
    return x[:48], y[:48], x[48:], y[48:]


def flaky(marker: str):
    """A task body whose worker process dies on the first attempt (a lost node), then works."""

    def task(source, options, shared):
        if not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)
        return evaluate_one(source, options, shared)

    return task


def always_dies(source, options, shared):
    os._exit(1)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_outcomes_equal_the_local_pools(local_ray) -> None:
    train = TrainSpec(epochs=1, seed=0)
    with RayEvaluator(timeout_s=5, memory_mb=1024) as ev:
        remote = ev.map(SOURCES, input_shape=SHAPE, train=train, data=data())
    with SandboxPool(2, timeout_s=5, memory_mb=1024) as pool:
        local = pool.map(SOURCES, input_shape=SHAPE, train=train, data=data())
    assert [o.status for o in remote] == ["ok", "invalid", "timeout"]
    assert [(o.status, o.params, o.accuracy) for o in remote] == [
        (o.status, o.params, o.accuracy) for o in local
    ]  # training is deterministic under the seed, wherever it runs


def test_a_lost_worker_is_retried_once_then_crashed(local_ray, tmp_path: Path) -> None:
    with RayEvaluator(timeout_s=10, task=flaky(str(tmp_path / "died-once"))) as ev:
        assert ev.map([SOURCES[0]], input_shape=SHAPE)[0].status == "ok"
    with RayEvaluator(timeout_s=10, task=always_dies) as ev:
        out = ev.map([SOURCES[0]], input_shape=SHAPE)[0]
    assert out.status == "crashed" and "after a retry" in out.reason
