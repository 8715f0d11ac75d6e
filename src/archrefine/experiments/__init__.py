"""The paper's experiments on the simulator: reproduce, claims, plots, robustness, calibrate, sweep.

May import sim, code, sandbox, space and core; real and cli build on it (never the reverse).
"""
