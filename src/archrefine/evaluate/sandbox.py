"""Compatibility re-export of the documented `archrefine.evaluate.sandbox` names."""

from archrefine.sandbox.sandbox import Outcome, SandboxPool, TrainSpec, run_code

__all__ = ["Outcome", "SandboxPool", "TrainSpec", "run_code"]
