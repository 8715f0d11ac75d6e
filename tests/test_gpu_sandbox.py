"""`evaluate.gpus_per_task > 0`: the sandbox binds the GPUs' device nodes into bwrap's /dev."""

from __future__ import annotations

import os
import subprocess

import pytest

from archrefine.sandbox import confine, workers


def fake_dev(tmp_path, names):
    for name in names:
        (tmp_path / name).write_text("")
    return str(tmp_path)


def test_gpu_devices_lists_the_nvidia_nodes_and_nothing_without_a_gpu(tmp_path):
    dev = fake_dev(tmp_path, ["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null", "sda"])
    assert confine.gpu_devices(dev) == [
        f"{dev}/nvidia0",
        f"{dev}/nvidia1",
        f"{dev}/nvidiactl",
        f"{dev}/nvidia-uvm",
    ]
    # the control nodes alone (a driver without a GPU) expose nothing
    no_gpu = tmp_path / "no-gpu"
    no_gpu.mkdir()
    assert confine.gpu_devices(fake_dev(no_gpu, ["nvidiactl", "null"])) == []


def test_bwrap_binds_the_devices_into_the_private_dev_and_only_when_asked(tmp_path):
    devices = ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"]
    plain = workers._bwrap_prefix(str(tmp_path), True, False)
    args = workers._bwrap_prefix(str(tmp_path), True, False, devices)
    assert "--dev-bind" not in plain
    dev = args.index("/dev", args.index("--dev"))  # the private /dev is mounted first ...
    binds = [i for i, a in enumerate(args) if a == "--dev-bind"]
    assert [args[i + 1] for i in binds] == devices == [args[i + 2] for i in binds]
    assert all(dev < i < args.index("--") for i in binds)  # ... then the nodes on top of it
    assert len(args) - len(plain) == 3 * len(devices)


def test_a_pool_asked_for_gpus_on_a_machine_without_one_fails_in_one_line(monkeypatch):
    from archrefine.sandbox.jobs import SandboxError
    from archrefine.sandbox.pool import SandboxPool

    monkeypatch.setattr(confine, "gpu_devices", lambda dev="/dev": [])
    with pytest.raises(SandboxError, match="no NVIDIA device nodes") as err:
        SandboxPool(1, gpus=True, isolation="rlimits")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(
    not confine.gpu_devices(), reason="no GPU on this machine (/dev/nvidia0 missing)"
)
def test_a_candidate_inside_bwrap_sees_the_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch here has no CUDA")
    if problem := workers.bwrap_problem():
        pytest.skip(f"bwrap does not work here: {problem}")
    os.chmod(tmp_path, 0o755)
    check = "import torch; print(torch.cuda.is_available(), torch.ones(2, device='cuda').sum())"
    prefix = workers._bwrap_prefix
    argv = [workers._python()[0], "-c", check]
    path = os.environ.get("PATH", "/usr/bin:/bin")  # bwrap may live in /usr/local/bin
    run = {"capture_output": True, "text": True, "timeout": 300, "env": {"PATH": path}}
    seen = subprocess.run(
        prefix(str(tmp_path), os.geteuid() == 0, workers.bwrap_config()[0], confine.gpu_devices())
        + argv,
        **run,
    )
    hidden = subprocess.run(
        prefix(str(tmp_path), os.geteuid() == 0, workers.bwrap_config()[0])
        + argv[:2]
        + ["import torch; print(torch.cuda.is_available())"],
        **run,
    )
    assert seen.stdout.startswith("True"), seen.stderr[-500:]
    assert hidden.stdout.strip() == "False", hidden.stderr[-500:]


def test_a_job_names_its_device_and_nothing_else_is_accepted():
    from archrefine.sandbox.jobs import job_options

    assert job_options(timeout_s=1, memory_mb=64)["device"] == "cpu"
    assert job_options(timeout_s=1, memory_mb=64, device="cuda")["device"] == "cuda"
    with pytest.raises(ValueError, match="^device: 'tpu' is not one of cpu, cuda$"):
        job_options(timeout_s=1, memory_mb=64, device="tpu")


def test_run_code_asks_for_the_gpu_as_the_pool_does(monkeypatch):
    """`run_code(gpus=True)` (what each Ray task declaring a GPU calls) makes a GPU pool."""
    from archrefine.sandbox.jobs import SandboxError
    from archrefine.sandbox.sandbox import run_code

    monkeypatch.setattr(confine, "gpu_devices", lambda dev="/dev": [])
    with pytest.raises(SandboxError, match="no NVIDIA device nodes"):
        run_code("class Net: pass", gpus=True, isolation="rlimits")


def test_a_gpu_pool_without_a_memory_cgroup_fails_in_one_line(monkeypatch):
    """CUDA cannot start under the per-process RLIMIT_AS, so a GPU job's memory is bounded by
    its cgroup; where there is none the pool says so rather than run jobs unbounded."""
    from archrefine.sandbox.jobs import SandboxError
    from archrefine.sandbox.pool import SandboxPool

    monkeypatch.setattr(confine, "gpu_devices", lambda dev="/dev": ["/dev/nvidia0"])
    monkeypatch.setattr(confine, "cgroup_problem", lambda: "no writable memory cgroup")
    with pytest.raises(SandboxError, match="need a memory cgroup") as err:
        SandboxPool(1, gpus=True, isolation="rlimits")
    assert "no writable memory cgroup" in str(err.value) and "\n" not in str(err.value)


ON_CUDA = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        assert x.is_cuda and next(self.parameters()).is_cuda, "not on the GPU"
        return self.f(x)
"""
GREEDY = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.hog = torch.empty(3 << 30, dtype=torch.uint8, device="cuda")  # 3 GB
        self.f = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.f(x)
"""

LIFTER = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        try:
            torch.cuda.set_per_process_memory_fraction(1.0)
        except AttributeError:
            torch._C._accelerator_setAllocatorSettings("per_process_memory_fraction:1.0")
        self.hog = torch.empty(3 << 30, dtype=torch.uint8, device="cuda")
        self.f = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x):
        return self.f(x)
"""


@pytest.mark.gpu
@pytest.mark.skipif(
    not confine.gpu_devices(), reason="no GPU on this machine (/dev/nvidia0 missing)"
)
def test_a_gpu_pool_trains_candidates_on_cuda_within_their_memory():
    """A whole job on the GPU: built, checked and trained on CUDA inside the sandbox, scored
    here; one that asks the GPU for more than its memory_mb is `oom`, one that first tries to
    lift that cap through torch gets nothing, and the next job runs."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch here has no CUDA")
    if problem := confine.cgroup_problem():
        pytest.skip(f"no memory cgroup for GPU jobs here: {problem}")
    import numpy as np

    from archrefine.sandbox.jobs import TrainSpec
    from archrefine.sandbox.pool import SandboxPool

    rng = np.random.default_rng(0)  # ten classes, each lifting one pixel: learnable in 3 epochs
    y = rng.integers(0, 10, 1500)
    x = rng.normal(size=(1500, 64)).astype("float32")
    x[np.arange(1500), y * 6] += 4.0
    x = x.reshape(-1, 1, 8, 8)
    data = (x[:1200], y[:1200], x[1200:], y[1200:])
    with SandboxPool(2, gpus=True, timeout_s=120, memory_mb=2048) as pool:
        train = TrainSpec(epochs=3, seed=0, lr=0.01)
        opts = dict(input_shape=(1, 8, 8), train=train, data=data)
        trained, greedy, lifter, again = pool.map([ON_CUDA, GREEDY, LIFTER, ON_CUDA], **opts)
    assert trained.status == "ok", trained.reason
    assert trained.accuracy > 0.8 and trained.params == 64 * 32 + 32 + 32 * 10 + 10
    assert greedy.status == "oom", greedy.reason
    assert lifter.status == "invalid" and "AttributeError" in lifter.reason, lifter.reason
    assert again.status == "ok" and again.accuracy == pytest.approx(trained.accuracy, abs=0.05)
