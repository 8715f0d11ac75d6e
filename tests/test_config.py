import pytest

from archrefine.core.config import Config, ConfigError, load_config, parse_overrides


def test_defaults_are_the_papers_setup():
    c = Config()
    assert (c.space.length, c.space.vocab, c.loop.population, c.loop.cycles, c.loop.top_k) == (
        15,
        30,
        50,
        22,
        10,
    )


def test_toml_round_trip(tmp_path):
    c = Config(trials=7).with_overrides({"schedule.kind": "cyclic", "loop.top_k": 5})
    path = tmp_path / "c.toml"
    path.write_text(c.to_toml())
    assert load_config(path) == c


def test_overrides_parse_types():
    c = load_config(None, ["loop.top_k=5", "schedule.kind=cosine", "generator.ceiling=0.9"])
    assert c.loop.top_k == 5 and c.schedule.kind == "cosine" and c.generator.ceiling == 0.9


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["schedule.kind=cosin"],
            "schedule.kind: 'cosin' is not one of constant, linear, cosine, cyclic",
        ),
        (["loop.population=-5"], "loop.population: Input should be greater than or equal to 2"),
        (["loop.top_k=60"], "top_k (60) must not exceed population (50)"),
        (["loop.colour=1"], "loop.colour: unknown key"),
        (["nosuch.key=1"], "nosuch: unknown section"),
        (["trials=many"], "trials: Input should be a valid integer"),
        (["loop.top_k"], "expected dotted.key=value"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[loop]\ncycles = 5\nspeed = 3\n")
    with pytest.raises(ConfigError, match="loop.speed: unknown key"):
        load_config(path)


def test_malformed_toml_and_missing_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[loop\ncycles = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_parse_overrides_keeps_strings():
    assert parse_overrides(["schedule.kind=cyclic", "seed=3"]) == {
        "schedule.kind": "cyclic",
        "seed": 3,
    }
