"""The README is the user's contract: its test command is CI's, its tables are current."""

import re
from pathlib import Path

import pytest

from archrefine.core.config import reference_table

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_cmd = next(b for b in blocks if "pytest" in b)
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()
    assert any("archrefine reproduce" in b for b in blocks)


def test_readme_configuration_reference_is_current():
    from archrefine.real.config import RealConfig

    readme = (ROOT / "README.md").read_text()
    assert reference_table() in readme
    assert reference_table(RealConfig) in readme  # regenerate: python scripts/update_readme.py


def test_readme_python_examples_run(capsys):
    pytest.importorskip("torch")
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
