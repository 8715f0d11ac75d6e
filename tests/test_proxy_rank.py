"""scripts/proxy_rank.py: the rank measure on scores of known ρ; its quick mode end to end."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from proxy_rank import (  # noqa: E402
    OLD,
    Proxy,
    current,
    main,
    parse_proxy,
    random_valid,
    spearman,
)

from archrefine.space import KNOWN, LENGTH, canonical, is_valid  # noqa: E402


def test_spearman_of_known_orders():
    ref = np.arange(20.0)
    assert spearman(ref**3, ref)[0] == pytest.approx(1.0)  # monotone: ρ = 1 whatever the scale
    assert spearman(-ref, ref)[0] == pytest.approx(-1.0)
    # swapping neighbours in 5 disjoint pairs: Σd² = 10, ρ = 1 - 6·10 / (n(n²-1)) exactly
    swapped = ref.copy()
    for i in range(0, 10, 2):
        swapped[[i, i + 1]] = swapped[[i + 1, i]]
    rho, lo, hi = spearman(swapped, ref)
    assert rho == pytest.approx(1 - 60 / (20 * 399))
    assert lo <= rho <= hi <= 1.0


def test_spearman_interval_covers_the_truth_and_narrows_with_more_networks():
    rng = np.random.default_rng(1)

    def draw(n: int) -> tuple[float, float, float]:
        x = rng.normal(size=n)
        return spearman(x + rng.normal(size=n), x, seed=2)

    # bivariate normal with r = 1/√2: Spearman's ρ = (6/π)·asin(r/2) = 0.690
    truth = 6 / np.pi * np.arcsin(0.5 / np.sqrt(2))
    rho_small, lo_small, hi_small = draw(30)
    rho_big, lo_big, hi_big = draw(1000)
    assert lo_big < truth < hi_big and abs(rho_big - truth) < 0.04
    assert hi_big - lo_big < (hi_small - lo_small) / 3
    with pytest.raises(ValueError, match="equal-length"):
        spearman(np.arange(3.0), np.arange(4.0))


def test_random_valid_networks_are_distinct_valid_and_seeded():
    exclude = {canonical(s) for s in KNOWN.values()}
    nets = random_valid(30, seed=5, exclude=exclude)
    assert len(set(nets)) == 30 and not set(nets) & exclude
    padded = np.array([t + (0,) * (LENGTH - len(t)) for t in nets])
    assert is_valid(padded).all()
    assert random_valid(30, seed=5, exclude=exclude) == nets
    assert random_valid(30, seed=6, exclude=exclude) != nets


def test_parse_proxy_fills_the_old_default_and_names_bad_fields():
    p = parse_proxy("fast:epochs=2,lr=3e-3")
    assert (p.name, p.epochs, p.lr, p.batch_size, p.max_train) == ("fast", 2, 3e-3, 32, 0)
    assert p.key() == Proxy("other", epochs=2, lr=3e-3).key()  # the name is not the recipe
    with pytest.raises(ValueError, match="'momentum' is not one of"):
        parse_proxy("x:momentum=0.9")
    with pytest.raises(ValueError, match="epochs"):
        parse_proxy("x:epochs=0")
    assert current().key() != "" and OLD.epochs == 1


@pytest.mark.torch
@pytest.mark.slow  # ~6 s on an idle 2-core machine (torch, the digits, 6 short trainings)
def test_quick_mode_end_to_end_caches_and_reports(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "rank"
    assert main(["--quick", "--workers", "1", "--out", str(out)]) == 0
    doc = json.loads((out / "rank.json").read_text())
    assert doc["networks"] == 3 and [p["name"] for p in doc["proxies"]][-1] == "reference"
    ref = doc["proxies"][-1]
    assert ref["rho"] == pytest.approx(1.0)  # the reference ranks itself perfectly
    for p in doc["proxies"]:
        assert -1 <= p["rho"] <= 1 and p["seconds_mean"] > 0
    acc = doc["accuracy"]["mlp"]
    assert 0.3 < acc["reference"] <= 1  # an MLP learns digits well above chance (0.1)
    results = pd.concat(pd.read_parquet(f) for f in out.glob("results*.parquet"))
    assert len(results) == 6 and results.accuracy.between(0, 1).all()
    # a rerun trains nothing: the cached accuracies come back unchanged
    capsys.readouterr()
    assert main(["--quick", "--workers", "1", "--out", str(out)]) == 0
    assert "training" not in capsys.readouterr().out
    assert json.loads((out / "rank.json").read_text())["accuracy"] == doc["accuracy"]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["--quick", "--workers", "3", "--out", str(tmp_path)]) == 2
    assert main(["--quick", "--proxy", "x:lr=fast", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
