"""Simulator layer: the batched loop, paper and learned token generators, spaces, selection.

May import core and space. Generators propose candidates, refined on the selection (one Protocol).
"""

from archrefine.sim.base import Candidates, Generator
from archrefine.sim.paper import PaperGenerator

__all__ = ["Candidates", "Generator", "PaperGenerator"]
