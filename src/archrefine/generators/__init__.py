"""Generators propose candidates and are refined on the selection; one Protocol for all."""

from archrefine.generators.base import Candidates, Generator
from archrefine.generators.paper import PaperGenerator

__all__ = ["Candidates", "Generator", "PaperGenerator"]
