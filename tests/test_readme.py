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


def test_readme_command_table_names_every_command_and_option():
    """Each registered command has a row in "Command line", and its rows name every option it
    takes (by any of its names): a new command or flag cannot stay undocumented."""
    import typer

    from archrefine.cli import app

    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    usages = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `")]
    missing = []
    for name, command in typer.main.get_command(app).commands.items():
        rows = " ".join(u for u in usages if re.match(rf"\| `archrefine {re.escape(name)}[ `]", u))
        if not rows:
            missing.append(f"archrefine {name}")
        for p in command.params:
            names = [*p.opts, *p.secondary_opts]
            if not rows or p.param_type_name != "option" or "--help" in names:
                continue
            if not any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", rows) for n in names):
                missing.append(f"archrefine {name} {p.opts[0]}")
    assert not missing, f"README's command table lacks {', '.join(missing)}"
