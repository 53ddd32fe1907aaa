"""MkDocs hook: the notebooks in ``notebooks/`` as pages of the site.

Each notebook becomes ``notebooks/<name>.md``: its Markdown cells as they are, its
code cells as Python blocks (the notebooks are stored without outputs;
``tests/test_notebooks.py`` executes them). Nothing is written to ``docs/``.
"""

import json
from pathlib import Path

from mkdocs.structure.files import File

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def notebook_markdown(path: Path) -> str:
    """The page of one notebook: a note where it lives, then its cells."""
    cells = json.loads(path.read_text())["cells"]
    parts = []
    for cell in cells:
        source = "".join(cell["source"]).rstrip()
        if cell["cell_type"] == "code":
            parts.append(f"```python\n{source}\n```")
        elif cell["cell_type"] == "markdown":
            parts.append(source)
    note = (
        f'!!! note "notebooks/{path.name}"\n    Run it with `jupyter notebook '
        f"notebooks/{path.name}` from the repository root; the suite executes it "
        "(`tests/test_notebooks.py`)."
    )
    first, *rest = parts
    return "\n\n".join([first, note, *rest]) + "\n"


def on_files(files, config):
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        src_uri = f"notebooks/{path.stem}.md"
        files.append(File.generated(config, src_uri, content=notebook_markdown(path)))
    return files
