"""archrefine: simulate and run LLM-driven architecture refinement loops.

>>> from archrefine import Config, simulate
>>> result = simulate(Config(trials=5))
>>> result.metrics.columns[:6].tolist()
['trial', 'cycle', 'validity', 'novelty', 'diversity', 'fitness']
"""

from archrefine.core.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "Result", "load_config", "simulate"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """`simulate` and `Result` load the simulator (numpy, pandas) on first use, so commands that
    never simulate (`archrefine --help`) start without it."""
    if name in ("Result", "simulate"):
        from archrefine.sim import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'archrefine' has no attribute {name!r}")
