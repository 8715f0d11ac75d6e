import numpy as np
import pytest

from archrefine.core.config import ScheduleConfig
from archrefine.core.schedules import rates

CYCLES = 22


def test_cycle_one_does_not_mutate_and_constant_is_constant():
    r = rates(ScheduleConfig(kind="constant", rate=0.4), CYCLES)
    assert np.isnan(r[0]) and np.allclose(r[1:], 0.4)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_decays_run_from_rate_to_min_rate(kind):
    r = rates(ScheduleConfig(kind=kind, rate=0.5, min_rate=0.1), CYCLES)[1:]
    assert r[0] == pytest.approx(0.5) and r[-1] == pytest.approx(0.1)
    assert np.all(np.diff(r) <= 1e-12)


def test_cyclic_stays_within_bounds_and_repeats():
    cfg = ScheduleConfig(kind="cyclic", min_rate=0.2, max_rate=0.8, period=4)
    r = rates(cfg, CYCLES)[1:]
    assert r.min() == pytest.approx(0.2) and r.max() == pytest.approx(0.8)
    assert np.allclose(r[:-4], r[4:])


def _torch_rates(scheduler_factory, base, steps):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = scheduler_factory(torch, opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


@pytest.mark.torch
def test_closed_forms_match_torch_lr_schedulers():
    steps = CYCLES - 1
    lo, hi = 0.1, 0.6
    cases = {
        "constant": (dict(rate=hi), lambda t, o: t.optim.lr_scheduler.ConstantLR(o, factor=1.0)),
        "linear": (
            dict(rate=hi, min_rate=lo),
            lambda t, o: t.optim.lr_scheduler.LinearLR(
                o, start_factor=1.0, end_factor=lo / hi, total_iters=steps - 1
            ),
        ),
        "cosine": (
            dict(rate=hi, min_rate=lo),
            lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps - 1, eta_min=lo),
        ),
    }
    for kind, (kw, factory) in cases.items():
        ours = rates(ScheduleConfig(kind=kind, **kw), CYCLES)[1:]
        assert np.allclose(ours, _torch_rates(factory, hi, steps)), kind
    for period in (4, 5, 6):
        ours = rates(
            ScheduleConfig(kind="cyclic", min_rate=lo, max_rate=hi, period=period), CYCLES
        )[1:]
        oracle = _torch_rates(
            lambda t, o, p=period: t.optim.lr_scheduler.CyclicLR(
                o,
                base_lr=lo,
                max_lr=hi,
                step_size_up=p / 2,
                mode="triangular",
                cycle_momentum=False,
            ),
            lo,
            steps,
        )
        assert np.allclose(ours, oracle), period
        ours = rates(
            ScheduleConfig(kind="cyclic", shape="cosine", min_rate=lo, max_rate=hi, period=period),
            CYCLES,
        )[1:]
        oracle = _torch_rates(
            lambda t, o, p=period: t.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                o, T_0=p, eta_min=lo
            ),
            hi,
            steps,
        )
        assert np.allclose(ours, oracle), ("sgdr", period)
