"""report.html: written at the end of run, reproduce, sweep and loop, rebuilt by `archrefine
report DIR`, safe against hostile candidate text, and working in a real headless browser.

The run, reproduce and sweep directories are made by the command line at a tiny size; the loop
directory is made with the library's own store and report writer (a real loop is in
`test_loop_command_writes_the_report`), with candidates whose code, reason and reply try to
break out of the page.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from archrefine.cli import app
from archrefine.core.store import close_run, open_run, write_parquet
from archrefine.report import html as report_html
from archrefine.report.html import FILE, build, write, write_safely

TINY = ["--set", "trials=2", "--set", "loop.cycles=6"]
HOSTILE_CODE = (
    "import torch\n# </script><script>window.pwned = 1</script>\n"
    "class Net(torch.nn.Module):\n    pass  # <!-- & &amp; \u2028 ]]>\n"
)
HOSTILE_REASON = '<img src=x onerror="window.pwned = 2"> </pre></aside>'
HOSTILE_REPLY = "no code: <script>window.pwned = 3</script><!--"


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """One directory of each kind; each command must leave a report.html."""
    root = tmp_path_factory.mktemp("reports")
    made = {
        "run": ["run", *TINY],
        "reproduce": ["reproduce", "--trials", "2", "--workers", "1"],
        "sweep": ["sweep", "--set", "loop.top_k=3,5", *TINY, "--workers", "1"],
    }
    out = {}
    for kind, args in made.items():
        code, _, err = cli(*args, "--out", root / kind)
        assert code == 0, err
        assert "warning" not in err, err
        out[kind] = root / kind
    out["loop"] = make_loop(root / "loop")
    write(out["loop"])  # what `archrefine loop` does at its end
    return out


def make_loop(out: Path, cycles: int = 6, population: int = 5, code: str = "") -> Path:
    """A loop directory written with the library (store, metrics, claims, phases, run.json),
    the first candidate of every cycle hostile, the second without code."""
    pytest.importorskip("datasketch")
    from archrefine.real.candidates import CandidateStore
    from archrefine.real.config import RealConfig
    from archrefine.real.report import write_report

    started = time.time()
    open_run(out, force=False, kind="loop", meta={"seed": 0})
    rng = np.random.default_rng(0)
    rows, parents = [], []
    with CandidateStore(out / "candidates.sqlite") as store:
        for c in range(1, cycles + 1):
            batch = []
            for i in range(population):
                hostile, no_code = i == 0, i == 1
                text = HOSTILE_CODE if hostile else code or f"# {c}.{i}"
                batch.append(
                    dict(
                        run_id="r", cycle=c, trial=i, prompt="p" * 50,
                        response=HOSTILE_REPLY if no_code else "ok",
                        code=None if no_code else text,
                        status="no_code" if no_code else "ok",
                        reason=HOSTILE_REASON if hostile else None,
                        accuracy=None if no_code else float(rng.uniform(0.1, 0.9)),
                        novelty=None if no_code else float(rng.uniform(0, 1)),
                        params=None if no_code else int(rng.integers(1_000, 10**6)),
                        parent_ids=parents,
                    )
                )  # fmt: skip
            ids = store.add_many(batch)
            scored = [(b["accuracy"] or -1, cid) for b, cid in zip(batch, ids)]
            parents = [cid for _, cid in sorted(scored)[-2:]]
            store.mark_selected(parents)
            ok = [b for b in batch if b["accuracy"] is not None]
            rows.append({"trial": 0, "cycle": c, "validity": len(ok) / population,
                         "novelty": np.mean([b["novelty"] for b in ok]), "diversity": 0.5 - c / 50,
                         "fitness": np.mean([b["accuracy"] for b in ok]),
                         "best_fitness": max(b["accuracy"] for b in ok)})  # fmt: skip
    frame = pd.DataFrame(rows)
    write_parquet(out / "metrics.parquet", frame)
    config = RealConfig().with_overrides({"loop.cycles": cycles, "loop.population": population})
    (out / "config.toml").write_text(config.to_toml())
    files = write_report(out, config, frame)
    close_run(out, files=files, started=started)
    return out


def candidates_json(page: str) -> list[dict]:
    pattern = r'<script type="application/json" id="candidates-data">(.*?)</script>'
    block = re.search(pattern, page, re.S)
    assert block is not None
    return json.loads(block.group(1))


# ---- without a browser -----------------------------------------------------------------------


def test_every_command_leaves_a_report_with_its_sections(dirs: dict[str, Path]) -> None:
    for kind in ("run", "reproduce", "sweep"):
        page = (dirs[kind] / FILE).read_text()
        assert page.startswith("<!DOCTYPE html>") and 'id="sec-trajectory"' in page, kind
        ours = re.sub(r"<script>.*?</script>", "", page, count=1, flags=re.S)  # less plotly.js
        assert len(ours) < len(page) - 4_000_000 and "Plotly.newPlot" in ours, kind
        assert "<script src" not in ours and "<link" not in ours and "://" not in ours, kind
    point = next((dirs["sweep"] / "points").iterdir())
    assert 'id="sec-trajectory"' in build(point) and not (point / FILE).exists()
    reproduce = (dirs["reproduce"] / FILE).read_text()
    claims = json.loads((dirs["reproduce"] / "claims.json").read_text())
    assert all(f"<td>{c['id']}</td>" in reproduce for c in claims) and len(claims) == 7
    assert 'id="sec-phases"' in reproduce and reproduce.count('class="plot"') == 3
    sweep = (dirs["sweep"] / FILE).read_text()
    assert 'id="points"' in sweep and "loop.top_k=3" in sweep and "loop.top_k=5" in sweep
    run = (dirs["run"] / FILE).read_text()
    assert 'id="claims"' not in run and "has no claims check" in run


def test_a_loop_report_holds_every_candidate_and_nothing_a_model_wrote_raw(
    dirs: dict[str, Path],
) -> None:
    from archrefine.real.candidates import CandidateStore

    page = build(dirs["loop"])
    for raw in (HOSTILE_CODE, HOSTILE_REASON, HOSTILE_REPLY, "<script>window", "<img"):
        assert raw not in page, raw
    shown = candidates_json(page)
    with CandidateStore(dirs["loop"] / "candidates.sqlite") as store:
        stored = store.to_frame()
    assert [c["id"] for c in shown] == list(stored.id)
    hostile = [c for c in shown if c["reason"] == HOSTILE_REASON]
    assert len(hostile) == 6 and all(c["code"] == HOSTILE_CODE for c in hostile)
    assert {c["response"] for c in shown if c["code"] is None} == {HOSTILE_REPLY}
    assert all(c["response"] is None for c in shown if c["code"] is not None)
    assert shown[-1]["parent_ids"] == stored.parent_ids.iloc[-1]
    assert "prompt" not in shown[0]  # prompts stay in the store


def test_only_the_pages_own_scripts_may_run_and_nothing_loads(dirs: dict[str, Path]) -> None:
    page = (dirs["loop"] / FILE).read_text()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src &#x27;none&#x27;" in policy and "unsafe-inline&#x27;; script" in policy
    hashes = set(re.findall(r"sha256-[A-Za-z0-9+/=]+", policy))
    inline = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(inline) >= 3 and {report_html._digest(s).strip("'") for s in inline} == hashes


def test_a_big_loop_stays_a_reasonable_file(tmp_path: Path) -> None:
    """22 cycles × 100 candidates: the code is in the page once (shown on demand), not twice."""
    code = "import torch\n" + "x = torch.zeros(3)  # a line of a network\n" * 35
    out = make_loop(tmp_path / "big", cycles=22, population=100, code=code)
    path = write(out)
    plotly_js = len(report_html.get_plotlyjs())
    code_bytes = 22 * 98 * len(code) + 22 * len(HOSTILE_CODE)
    assert path.stat().st_size < plotly_js + 1.2 * code_bytes + 600_000
    assert len(candidates_json(path.read_text())) == 2200


def test_report_command_rebuilds_and_can_write_elsewhere(dirs: dict[str, Path], tmp_path) -> None:
    target = tmp_path / "copy.html"
    code, _, err = cli("report", dirs["sweep"], "--out", target)
    assert code == 0, err
    assert target.read_text().startswith("<!DOCTYPE html>") and "wrote" in err


@pytest.mark.parametrize(
    "damage, words",
    [
        (None, "no such directory"),
        ("empty", "not a run directory"),
        ("metrics.parquet", "not a readable Parquet file"),
        ("claims.json", "claims.json: not valid JSON"),
        ("run.json", "run.json: not readable text"),
        ("phases.json", "phases.json: expected a JSON object"),
        ("calibrate", "holds a 'calibrate' run"),
    ],
)
def test_unreadable_directories_are_one_line_errors(dirs, tmp_path, damage, words) -> None:
    target = tmp_path / "d"
    if damage == "empty":
        target.mkdir()
    elif damage is not None:
        shutil.copytree(dirs["loop"], target)
        (target / FILE).unlink()
        garbage = {"metrics.parquet": b"PAR1 not parquet", "claims.json": b"[{",
                   "run.json": b"\x80\x04\x95pickle", "phases.json": b"[1, 2]",
                   "candidates.sqlite": b"not sqlite" * 100}  # fmt: skip
        if damage == "calibrate":
            info = json.loads((target / "run.json").read_text())
            (target / "run.json").write_text(json.dumps({**info, "kind": "calibrate"}))
        else:
            for extra in ("-wal", "-shm"):
                (target / f"candidates.sqlite{extra}").unlink(missing_ok=True)
            (target / damage).write_bytes(garbage[damage])
    assert words in one_line_error(*cli("report", target)[::2])
    assert not (target / FILE).exists() or damage is None


def test_a_failing_report_is_a_warning_and_the_run_still_completes(tmp_path, monkeypatch) -> None:
    def broken(directory, info=None):
        raise RuntimeError("plotly exploded\nwith two lines")

    monkeypatch.setattr(report_html, "build", broken)
    assert write_safely(tmp_path) == "plotly exploded with two lines"
    code, _, err = cli("run", *TINY, "--out", tmp_path / "r")
    assert code == 0, err
    assert "warning: report.html not written: plotly exploded with two lines" in err
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "complete"
    assert not (tmp_path / "r" / FILE).exists()


@pytest.mark.slow
@pytest.mark.torch
def test_loop_command_writes_the_report(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("datasketch")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # its own signing key
    small = ["loop.cycles=2", "loop.population=4", "loop.top_k=2", "evaluate.max_train=100"]
    args = [x for s in small for x in ("--set", s)]
    code, _, err = cli("loop", *args, "--out", tmp_path / "loop")
    assert code == 0, err
    shown = candidates_json((tmp_path / "loop" / FILE).read_text())
    assert len(shown) == 8 and {c["cycle"] for c in shown} == {1, 2}


# ---- in a real headless browser (Debian's chromium and its driver; .ci/run installs them) ----

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("chromium or chromedriver missing (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def open_page(driver, path: Path, fragment: str = "") -> None:
    """Load a report and wait until every plot has drawn its SVG."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri() + fragment)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script(
            "const plots = document.querySelectorAll('div.plot');"
            "return plots.length > 0 && Array.from(plots).every("
            "p => p.querySelector('.main-svg') !== null);"
        )
    )


def severe(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def column(driver, table: str, name: str) -> list[str]:
    """The data-value of the column headed `name` in a table's visible rows, top to bottom."""
    return driver.execute_script(
        "const t = document.getElementById(arguments[0]);"
        "const n = Array.from(t.tHead.rows[0].cells)"
        ".findIndex(c => c.textContent === arguments[1]);"
        "return Array.from(t.tBodies[0].rows).filter(r => !r.hidden)"
        ".map(r => r.cells[n].dataset.value);",
        table,
        name,
    )


def header(driver, table: str, name: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, f"//table[@id='{table}']//th[text()='{name}']")


def is_sorted(values: list[str], reverse: bool = False) -> bool:
    numbers = [float(v) for v in values if v != ""]
    blanks_last = all(v == "" for v in values[len(numbers) :])
    return blanks_last and numbers == sorted(numbers, reverse=reverse)


@pytest.mark.slow
def test_every_report_loads_without_console_errors_and_draws_its_plots(browser, dirs) -> None:
    plots = {"run": 1, "reproduce": 3, "sweep": 1, "loop": 2}
    for kind, count in plots.items():
        open_page(browser, dirs[kind] / FILE)
        drawn = browser.execute_script("return document.querySelectorAll('.plotly .main-svg')")
        assert len(browser.find_elements("css selector", "div.plot")) == count, kind
        assert len(drawn) >= count and severe(browser) == [], kind


@pytest.mark.slow
def test_tables_sort_and_a_legend_click_toggles_a_condition_in_every_panel(browser, dirs) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, dirs["reproduce"] / FILE)
    header(browser, "claims", "confidence").click()
    assert is_sorted(column(browser, "claims", "confidence"))
    schedules = "document.getElementById('plot-2')"
    hidden = (
        f"return {schedules}.data.filter(t => t.visible === 'legendonly').map(t => t.legendgroup)"
    )
    assert browser.execute_script(hidden) == []
    assert browser.execute_script(f"return {schedules}.layout.hovermode") == "x unified"
    browser.find_elements(By.CSS_SELECTOR, "#plot-2 .legendtoggle")[0].click()
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(hidden))  # after the dblclick delay
    groups = browser.execute_script(hidden)  # the line (and its band, if drawn) in all six panels
    group = f"return {schedules}.data.filter(t => t.legendgroup === 'constant').length"
    assert set(groups) == {"constant"} and len(groups) == browser.execute_script(group) >= 6
    open_page(browser, dirs["sweep"] / FILE)
    header(browser, "points", "fitness").click()
    header(browser, "points", "fitness").click()
    assert is_sorted(column(browser, "points", "fitness"), reverse=True)
    assert severe(browser) == []


@pytest.mark.slow
def test_the_candidate_table_sorts_filters_and_opens_code_reason_and_lineage(browser, dirs) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(browser, dirs["loop"] / FILE)
    js = browser.execute_script
    assert len(column(browser, "candidates", "id")) == 30
    accuracy = header(browser, "candidates", "accuracy")
    accuracy.click()
    assert accuracy.get_attribute("aria-sort") == "ascending"
    assert is_sorted(column(browser, "candidates", "accuracy"))
    accuracy.click()
    assert is_sorted(column(browser, "candidates", "accuracy"), reverse=True)

    Select(browser.find_element(By.ID, "f-status")).select_by_value("no_code")
    assert len(column(browser, "candidates", "id")) == 6
    assert browser.find_element(By.ID, "f-count").text == "6 of 30 shown"
    Select(browser.find_element(By.ID, "f-status")).select_by_value("")
    Select(browser.find_element(By.ID, "f-cycle")).select_by_value("2")
    assert sorted(int(i) for i in column(browser, "candidates", "id")) == list(range(6, 11))
    Select(browser.find_element(By.ID, "f-cycle")).select_by_value("")
    browser.find_element(By.ID, "f-selected").click()
    assert column(browser, "candidates", "selected") == ["1"] * 12
    browser.find_element(By.ID, "f-selected").click()
    browser.find_element(By.ID, "f-text").send_keys("pwned")
    assert len(column(browser, "candidates", "id")) == 12  # 6 hostile codes, 6 replies

    hostile = [int(v) for v in column(browser, "candidates", "id")]
    shown = {c["id"]: c for c in candidates_json((dirs["loop"] / FILE).read_text())}
    first = next(i for i in hostile if shown[i]["code"] == HOSTILE_CODE and shown[i]["cycle"] > 1)
    browser.find_element(By.CSS_SELECTOR, f'#candidates tr[data-id="{first}"]').click()
    assert js("return document.getElementById('d-code').textContent") == HOSTILE_CODE
    assert js("return document.getElementById('d-reason').textContent") == HOSTILE_REASON
    assert js("return window.pwned === undefined && document.querySelector('img') === null")
    parents = browser.find_elements(By.CSS_SELECTOR, "#d-lineage p:first-child button")
    assert [int(b.text[1:]) for b in parents] == shown[first]["parent_ids"]
    parents[0].click()
    title = browser.find_element(By.ID, "d-title").text
    assert title.startswith(f"Candidate #{shown[first]['parent_ids'][0]} ")

    reply = next(i for i in hostile if shown[i]["code"] is None)
    open_page(browser, dirs["loop"] / FILE, f"#c{reply}")  # a link to one candidate opens it
    assert js("return document.getElementById('d-response').textContent") == HOSTILE_REPLY
    assert browser.find_element(By.ID, "d-response-box").is_displayed()
    assert js("return window.pwned === undefined") and severe(browser) == []
