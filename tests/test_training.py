"""First-epoch accuracy: NaN for invalid sequences, canonical caching, determinism, learning."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from archrefine.sandbox.training import FirstEpochFitness, digits  # noqa: E402
from archrefine.space import KNOWN, LENGTH, VOCAB, is_valid, token_id  # noqa: E402

pytestmark = pytest.mark.torch

MLP = np.array(KNOWN["mlp"])
HEAD_FIRST = np.array([token_id("head")] + [0] * (LENGTH - 1))  # invalid: head needs flat input


def padded(seq: np.ndarray) -> np.ndarray:
    """The same network with no-ops moved around and junk after the head."""
    tokens = [t for t in seq.tolist() if t]
    out = [0, tokens[0], 0, *tokens[1:]] + [token_id("conv3_64"), token_id("head")]
    return np.array((out + [0] * LENGTH)[:LENGTH])


def cheap_valid(n: int, seed: int) -> np.ndarray:
    """Random valid sequences without convolutions on the full-size input (fast to train)."""
    rng = np.random.default_rng(seed)
    seqs = rng.integers(0, len(VOCAB), (200_000, LENGTH))
    seqs = seqs[is_valid(seqs)]
    first = np.array([VOCAB[s[s > 0][0]] for s in seqs])
    return seqs[np.isin(first, ["flatten", "patch4_64", "maxpool2", "avgpool2", "gap"])][:n]


def test_data_is_standardised_and_held_out_is_stratified():
    from archrefine.sandbox.training import TrainSettings

    x, y, xh, yh = digits(TrainSettings(max_train=100))
    assert tuple(x.shape) == (100, 3, 32, 32) and tuple(xh.shape) == (450, 3, 32, 32)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3
    assert np.bincount(yh.numpy()).min() >= 43 and len(np.unique(y.numpy())) == 10


def test_invalid_sequences_score_nan_and_are_never_trained():
    fit = FirstEpochFitness(workers=1, max_train=50)
    acc = fit(np.stack([[MLP, HEAD_FIRST], [HEAD_FIRST, HEAD_FIRST]]))
    assert acc.shape == (2, 2)
    assert 0 <= acc[0, 0] <= 1 and np.isnan(acc.ravel()[1:]).all()
    assert fit.trained == 1


def test_a_known_network_learns_above_chance_in_one_epoch():
    acc = FirstEpochFitness(workers=1)(np.stack([MLP, np.array(KNOWN["lenet5"])]))
    assert ((acc > 0.2) & (acc <= 1)).all(), acc


def test_padded_variants_hit_the_cache_and_save_load_round_trips(tmp_path):
    fit = FirstEpochFitness(workers=1, max_train=50)
    first = fit(np.stack([MLP, padded(MLP)]))  # one network, trained once
    assert fit.trained == 1 and first[0] == first[1]
    again = fit(padded(MLP)[None])
    assert fit.trained == 1 and fit.hits == 1 and again[0] == first[0]
    fit.save(tmp_path / "cache.json")
    fresh = FirstEpochFitness(workers=1, max_train=50)
    assert fresh.load(tmp_path / "cache.json") == 1
    assert fresh(MLP[None])[0] == first[0] and fresh.trained == 0
    no_cache = FirstEpochFitness(workers=1, max_train=50, cache=False)
    no_cache(MLP[None]), no_cache(MLP[None])
    assert no_cache.trained == 2
    other = FirstEpochFitness(workers=1, max_train=50, seed=1)
    with pytest.raises(ValueError, match="seed=0, this run has 1"):
        other.load(tmp_path / "cache.json")
    assert json.loads((tmp_path / "cache.json").read_text())["settings"]["max_train"] == 50
    assert [p.name for p in tmp_path.iterdir()] == ["cache.json"]  # no temporary left behind


@pytest.mark.slow
def test_same_seed_same_accuracies_for_one_and_two_workers():
    seqs = np.concatenate([cheap_valid(5, 0), MLP[None], np.array(KNOWN["lenet5"])[None]])
    one = FirstEpochFitness(workers=1, max_train=60)(seqs)
    with FirstEpochFitness(workers=2, max_train=60) as fit:
        two = fit(seqs[::-1])[::-1]  # call order must not matter either
        assert fit.trained == len(seqs)
    np.testing.assert_array_equal(one, two)
    assert not np.isnan(one).any()
    other_seed = FirstEpochFitness(workers=1, max_train=60, seed=1)(seqs)
    assert not np.array_equal(one, other_seed)


def test_bad_settings_are_one_line_errors():
    for kwargs, word in [
        ({"workers": -1}, "workers"),  # 0 is every core
        ({"max_train": 5}, "max_train"),
        ({"lr": -1.0}, "lr"),
        ({"epochs": 0}, "epochs"),
    ]:
        with pytest.raises(ValueError, match=word) as err:
            FirstEpochFitness(**kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="shape"):
        FirstEpochFitness(workers=1)(np.zeros((2, 7), int))
