"""The README's Python API example runs as written (on the embedded sample, in a scratch directory)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S)
    assert match, "README has no Python API example"
    return match.group(1)


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").symlink_to(ROOT / "data")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "auc" in out and "request_id" in out
    assert (tmp_path / "runs" / "api" / "saved" / "model.json").exists()
