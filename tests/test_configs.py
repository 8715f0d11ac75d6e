from pathlib import Path

import pytest

from archrefine import Config, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def test_there_are_ready_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    assert isinstance(load_config(path), Config)


def test_paper_config_is_the_defaults():
    assert load_config(CONFIGS[0].parent / "paper.toml") == Config()


LOOP_CONFIGS = sorted((CONFIGS[0].parent / "loop").glob("*.toml"))


def test_there_are_ready_loop_configs():
    assert {p.stem for p in LOOP_CONFIGS} == {"learned", "hf", "openai", "tiny"}


@pytest.mark.parametrize("path", LOOP_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_loop_config_loads(path):
    from archrefine.real import RealConfig

    assert isinstance(load_config(path, model=RealConfig), RealConfig)
