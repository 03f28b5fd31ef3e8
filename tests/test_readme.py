"""The README's code runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_python_example_runs_and_learns(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    accuracy = float(re.search(r"test accuracy: ([0-9.]+)", capsys.readouterr().out).group(1))
    assert accuracy > 0.9
