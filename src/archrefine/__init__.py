"""archrefine: simulate and run LLM-driven architecture refinement loops.

>>> from archrefine import Config, simulate
>>> result = simulate(Config(trials=5))
>>> result.metrics.columns[:6].tolist()
['trial', 'cycle', 'validity', 'novelty', 'diversity', 'fitness']
"""

from archrefine.core.config import Config, ConfigError, load_config
from archrefine.sim.loop import Result, simulate

__all__ = ["Config", "ConfigError", "Result", "load_config", "simulate"]
__version__ = "0.1.0"
