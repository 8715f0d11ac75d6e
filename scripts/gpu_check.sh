#!/usr/bin/env bash
# The GPU checks of issue 14, as one short run on a machine with an NVIDIA GPU, PyTorch with CUDA,
# transformers and peft (docs/sandbox.md, "GPUs, when asked"): the hf generator samples and
# LoRA-refines on CUDA; a candidate inside bwrap reaches the GPU exactly when its device nodes are
# bound in; a whole pool job with `gpus=True` builds and trains its network on CUDA within its
# memory_mb (run as root, for the memory cgroup). First, what the per-process address-space limit
# (RLIMIT_AS, a CPU job's memory bound) does to CUDA, which is why GPU jobs use the cgroup instead.
# Missing Python packages can be installed first (`pip install -e .[real]`); bubblewrap must be on
# PATH (apt-get install bubblewrap), else the bwrap tests skip with that reason.
#   bash scripts/gpu_check.sh            # from the repository root
set -euo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L
python3 -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'; print('torch', torch.__version__)"
python3 -c "from archrefine.sandbox import confine, workers; print('uid', __import__('os').getuid(), '| memory cgroup:', confine.cgroup_problem() or 'usable', '| bwrap:', workers.bwrap_problem() or 'usable')"
python3 - <<'PY'
import os, resource, torch
for limit_gb in (2, 8, None):
    pid = os.fork()
    if pid == 0:
        if limit_gb is not None:
            with open("/proc/self/statm") as f:
                vm = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (vm + (limit_gb << 30),) * 2)
        try:
            torch.ones(2, device="cuda").sum().item()
            print(f"RLIMIT_AS = VM + {limit_gb} GB: CUDA starts", flush=True)
        except Exception as err:
            print(f"RLIMIT_AS = VM + {limit_gb} GB: CUDA fails: {str(err).splitlines()[0][:150]}", flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
PY
python3 - <<'PY'
import os, torch
from torch import nn
net = nn.Linear(4, 2)  # what a CPU backward pass before a fork does to the child's CUDA
nn.functional.cross_entropy(net(torch.randn(3, 4)), torch.zeros(3).long()).backward()
pid = os.fork()
if pid == 0:
    try:
        torch.ones(2, device="cuda").sum().item()
        print("after a CPU backward in the parent, a forked child's CUDA starts", flush=True)
    except Exception as err:
        print(f"after a CPU backward in the parent, a forked child's CUDA fails: {str(err).splitlines()[0][:120]}", flush=True)
    os._exit(0)
os.waitpid(pid, 0)
PY
python3 -m pytest -q -rs -p no:cacheprovider \
    "tests/test_hf.py::test_generate_and_refine_on_cuda" tests/test_gpu_sandbox.py
