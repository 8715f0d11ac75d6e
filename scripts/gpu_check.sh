#!/usr/bin/env bash
# The GPU checks of issue 14, as one short run on a machine with an NVIDIA GPU, PyTorch with CUDA,
# transformers and peft (docs/sandbox.md, "GPUs, when asked"): the hf generator samples and
# LoRA-refines on CUDA, and a candidate inside bwrap reaches the GPU exactly when its device
# nodes are bound in. Missing Python packages can be installed first (`pip install -e .[real]`);
# bubblewrap must be on PATH (apt-get install bubblewrap), else the bwrap test skips with that reason.
#   bash scripts/gpu_check.sh            # from the repository root
set -euo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L
python3 -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'; print('torch', torch.__version__)"
python3 -m pytest -q -rs -p no:cacheprovider \
    "tests/test_hf.py::test_generate_and_refine_on_cuda" tests/test_gpu_sandbox.py
