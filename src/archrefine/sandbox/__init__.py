"""Running model-written code: isolation (bwrap), worker pool, training harness, Ray backend.

May import core and space; `_worker.py`/`_worker_os.py` run by path inside the sandbox.
"""
