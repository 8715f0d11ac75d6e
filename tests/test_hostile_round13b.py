"""The hostile suite, round 13b: the scoring path end to end, the fallback's view, two workers.

Same rules as `test_hostile.py`: each test is one attack a model-written candidate could make,
run through the real `SandboxPool` in whatever isolation this machine gives (without the audit
hook, which is advisory: the OS layer and the host are what must hold); each fails on the code
before its fix.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from test_hostile import NET, SHAPE, checked  # noqa: E402

from archrefine.sandbox.sandbox import SandboxPool, TrainSpec  # noqa: E402

pytestmark = [pytest.mark.torch]


def split(seed: int, n_train: int = 1300):
    """The digits, split at random by `seed`: two seeds' splits overlap, so most held-out
    images of one are training images (with their labels) of the other."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, *SHAPE)
    order = np.random.default_rng(seed).permutation(len(y))
    train, held = order[:n_train], order[-450:]
    return x[train], y[train], x[held], y[held]


# ---- 1. an earlier call's dataset, still in the inputs every job reads -------------------------

STALE = r"""
import gc, glob, os
import numpy as np, torch, torch.nn as nn

job = next(o for o in gc.get_objects() if isinstance(o, dict) and "n_val" in o and "data" in o)
xs, ys = [], []
for f in glob.glob(os.path.join(os.path.dirname(job["source"]), "data-*.npz")):
    if f != job["data"]:  # another dataset the pool was given: its labels, by image
        with np.load(f) as z:
            xs.append(z["x"].reshape(len(z["x"]), -1)), ys.append(z["y"])
TABLE = (torch.tensor(np.concatenate(xs)), torch.tensor(np.concatenate(ys))) if xs else None


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(10))

    def forward(self, x):
        x = x.flatten(1)
        if TABLE is None or self.training:
            return self.w.expand(len(x), 10) + 0
        twin = torch.cdist(x, TABLE[0]).argmin(1)  # answer each image by its labelled twin
        return nn.functional.one_hot(TABLE[1][twin], 10).float() + 0 * self.w
"""


def test_an_earlier_calls_dataset_cannot_answer_this_ones_held_out_set() -> None:
    """A pool given two splits (seeds, folds) kept every dataset's file in the inputs all jobs
    read, so a job scored on split 0 read split 1's training labels and answered split 0's
    held-out images by lookup: 1.00 (0.998 measured). Now only the current call's file is
    there; the lookup finds nothing and scores chance."""
    with SandboxPool(1, timeout_s=20, audit=False) as pool:
        first = pool.run(NET, input_shape=SHAPE, train=TrainSpec(seed=1), data=split(1))
        assert first.status == "ok", first
        out = pool.run(STALE, input_shape=SHAPE, train=TrainSpec(seed=0), data=split(0))
    checked(out)
    assert out.status == "ok" and out.accuracy <= 0.3, out
