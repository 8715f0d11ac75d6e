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
    run = {"capture_output": True, "text": True, "timeout": 300, "env": {"PATH": "/usr/bin:/bin"}}
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
