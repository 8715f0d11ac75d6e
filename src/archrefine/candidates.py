"""Compatibility re-export of the documented `archrefine.candidates.CandidateStore`."""

from archrefine.real.candidates import CandidateStore, CandidateStoreError

__all__ = ["CandidateStore", "CandidateStoreError"]
