"""Fixtures shared by the hostile-reply tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def archive():
    """A novelty archive seeded with KNOWN's sources, networks held beside `Net` read too
    (`twins`): the archive the real loop starts from. A module may define its own."""
    from archrefine.code.novelty_code import CodeNovelty

    nov = CodeNovelty(twins=True)
    nov.seed_with_known()
    return nov
