"""The documentation cannot go stale: the site builds with ``mkdocs build --strict``
(broken links and anchors, pages missing from the navigation, unknown API names
fail it), every Python block of the README and of ``docs/`` runs, every shell
block's commands name real modules, flags and configuration keys and are run by a
named test, and the configuration page lists exactly the schema's keys.

A Python block that cannot run here (it needs a dataset, a GPU, downloaded
weights or an optional extra) says why on the line before it, visible in the
Markdown source::

    <!-- docs-test: skip: needs the onnx extra (Python 3.11 only) -->

Its ``ssd_jax`` imports are still executed, so a renamed API fails it too. The
blocks of one page run in order in one namespace (as a reader would paste them),
in a scratch folder that looks like the repository root after the quickstart:
``configs/`` and ``runs/shapes`` (a small trained checkpoint, the fixture in
``tests/data/checkpoint_v0.1``).
"""

import ast
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "checkpoint_v0.1"
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").rglob("*.md")])
SKIP = re.compile(r"<!--\s*docs-test:\s*skip:(.*?)-->")
FENCE = re.compile(r"^(\s*)(`{3,})(.*)$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the stated reason, for a block that is not run

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the skip reason stated on
    the line before each (an empty reason is an error)."""
    lines = path.read_text().splitlines()
    found, k = [], 0
    while k < len(lines):
        fence = FENCE.match(lines[k])
        if not fence:
            k += 1
            continue
        indent, ticks, info = fence.groups()
        end = k + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        code = "\n".join(line[len(indent) :] for line in lines[k + 1 : end])
        before = next((line for line in reversed(lines[:k]) if line.strip()), "")
        skip = SKIP.search(before)
        reason = skip.group(1).strip() if skip else None
        if skip and not reason:
            raise AssertionError(f"{path}:{k + 1}: a skipped block must say why")
        lang = info.strip().split()[0] if info.strip() else ""
        found.append(Block(path, k + 1, lang, code, reason))
        k = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
PYTHON_PAGES = sorted({b.path for b in ALL_BLOCKS if b.lang == "python"})


def _require(module: str):
    """The docs tools are in the dev extra; without them the test is skipped
    locally, but fails in CI (CI=true), where they must be installed."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def test_the_site_builds_with_mkdocs_strict(tmp_path):
    _require("mkdocs")
    _require("mkdocstrings_handlers.python")
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "api" / "inference" / "index.html").read_text().count("load_detector")


@pytest.fixture
def scratch_root(tmp_path, monkeypatch):
    """A folder that looks like the repository root after the quickstart."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    shutil.copytree(FIXTURE, tmp_path / "runs" / "shapes")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _ssd_jax_imports(code: str) -> str:
    """The top-level imports of ``code`` from ssd_jax (a skipped block's part that
    still runs: it keeps the names it uses real)."""
    keep = []
    for node in ast.parse(code).body:
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        if all(name.startswith("ssd_jax") for name in names):
            keep.append(node)
    return ast.unparse(ast.Module(body=keep, type_ignores=[]))


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, scratch_root):
    namespace = {"__name__": "__docs__"}
    for block in blocks(page):
        if block.lang != "python":
            continue
        code = _ssd_jax_imports(block.code) if block.skip else block.code
        compile(block.code, block.where, "exec")  # skipped blocks too: valid Python
        try:
            exec(compile(code, block.where, "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the Python block at {block.where} fails: {error!r}") from error


# Shell blocks: the commands they may use, and for each command of ours the tests
# that run it (so the documented command is exercised, not just spelt right).
COMMAND_TESTS = {
    "ssd_jax.train": ["tests/test_train.py"],
    "ssd_jax.evaluate": ["tests/test_commands.py::test_evaluate_command_takes_a_step_and_another_configuration"],
    "ssd_jax.predict": ["tests/test_commands.py::test_predict_command_draws_detections_and_skips_bad_files"],
    "ssd_jax.export": ["tests/test_inference.py::test_the_export_command_writes_a_detector_for_every_platform_that_runs_alone"],
    "ssd_jax.convert": ["tests/test_convert.py"],
    "ssd_jax.data.prepare": ["tests/test_data_sources.py"],
    "convert_torch_backbone.py": ["tests/test_convert.py"],
}  # fmt: skip
# Not run by a test, with the reason: benchmarks take minutes (their flags are
# still checked); the set-up and test commands are what CI itself runs.
NOT_RUN = {
    "benchmarks": "benchmarks take minutes of compute; flags checked",
    "pip": "the set-up, run by CI",
    "python3 -m venv": "the set-up, run by CI",
    ".": "the set-up, run by CI",
    "ruff": "run by CI",
    "pytest": "run by CI",
    "tests/newest_stack.sh": "run by CI",
    "mkdocs": "run by test_the_site_builds_with_mkdocs_strict",
    "tensorboard": "an external viewer",
    "bash benchmarks/gpu_suite.sh": "needs an NVIDIA GPU",
}
ABSL_FLAGS = {"help", "helpfull", "helpshort", "verbosity", "v", "logtostderr", "alsologtostderr"}


def _commands(text: str) -> list[str]:
    """The commands of a shell snippet: continuations joined, comments dropped,
    split at ``&&`` and line ends."""
    text = re.sub(r"\\\n\s*", " ", text)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [c.strip() for line in lines for c in line.split("&&") if c.strip()]


def _inline_commands(page: Path) -> list[str]:
    """Commands of ours in inline code (the README's command table)."""
    spans = re.findall(r"`(python (?:-m (?:ssd_jax|benchmarks)[^`\s]*|convert_torch_backbone\.py)[^`]*)`",
                       page.read_text())  # fmt: skip
    return [s for s in spans if "..." not in s and "<" not in s]


def _defined_flags(source_file: Path) -> set[str]:
    source = source_file.read_text()
    names = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    if "define_checkpoint_flags" in source:
        names |= {"checkpoint", "step"}
    if "benchmarks.common" in source or "from benchmarks import common" in source:
        names |= _defined_flags(ROOT / "benchmarks" / "common.py")
    return names | ABSL_FLAGS


def _check_command(command: str, where: str) -> str:
    """Checks one command of ours and returns its name (a key of COMMAND_TESTS or
    NOT_RUN); raises AssertionError naming ``where``."""
    words = shlex.split(command)
    for prefix in NOT_RUN:
        if command.startswith(prefix + " ") or command == prefix:
            return prefix
    if words[0] not in ("python", "python3"):
        raise AssertionError(f"{where}: {words[0]!r} is neither a command of ours nor in NOT_RUN")
    if words[1] == "-c":
        compile(words[2], where, "exec")
        return "python -c"
    if words[1] == "-m":
        module, args = words[2], words[3:]
        if module == "venv":
            return "python3 -m venv"
        source = ROOT / (module.replace(".", "/") + ".py")
    else:
        module, args = words[1], words[2:]
        source = ROOT / module
    assert source.is_file(), f"{where}: {module} does not exist"
    flags = _defined_flags(source)
    config = None
    for k, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, _, value = arg[2:].partition("=")
        if name.startswith("config."):
            continue
        assert name in flags, f"{where}: {module} has no flag --{name}"
        if name == "config":
            config = value or args[k + 1]
    for arg in args:
        if arg.startswith("--config."):
            _check_config_key(arg[len("--config.") :].partition("=")[0], config, where)
    return "benchmarks" if module.startswith("benchmarks") else module


def _check_config_key(key: str, config_file: str | None, where: str) -> None:
    from ssd_jax.config_schema import base_config, load_config_file

    config = load_config_file(ROOT / config_file) if config_file else base_config()
    node = config
    for part in key.split("."):
        assert part in node, f"{where}: --config.{key}: no such configuration key"
        node = node[part]


def test_shell_commands_name_real_modules_flags_and_keys_and_are_tested():
    used = set()
    for block in ALL_BLOCKS:
        if block.lang in ("bash", "sh", "shell", "console"):
            for command in _commands(block.code):
                used.add(_check_command(command, block.where))
    for page in PAGES:
        for command in _inline_commands(page):
            used.add(_check_command(command, str(page.relative_to(ROOT))))
    assert "ssd_jax.train" in used and "ssd_jax.data.prepare" in used
    for command in used & set(COMMAND_TESTS):
        for test in COMMAND_TESTS[command]:
            file, _, function = test.partition("::")
            source = (ROOT / file).read_text()
            assert f'"{command}"' in source, f"{file} runs no {command}"
            assert not function or f"def {function}(" in source, f"{test} does not exist"


def test_the_quickstart_image_command_runs(tmp_path, monkeypatch):
    """The README quickstart's ``python -c`` line (the rest of its block runs in
    the command tests)."""
    monkeypatch.chdir(tmp_path)
    readme = (ROOT / "README.md").read_text()
    snippet = next(w for c in _commands(readme) if "python -c" in c for w in [shlex.split(c)[2]])
    exec(compile(snippet, "README.md", "exec"), {})
    assert (tmp_path / "shapes.png").stat().st_size > 0


def _schema_keys() -> set[str]:
    from ssd_jax.config_schema import base_config

    def flat(node, prefix=""):
        for key, value in node.items():
            if hasattr(value, "items"):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield prefix + key

    # data.eval has the same keys as data.train; the page lists them once
    return {k for k in flat(base_config()) if not k.startswith("data.eval.")}


def test_the_configuration_page_lists_exactly_the_schema_keys():
    page = (ROOT / "docs" / "configuration.md").read_text()
    listed = set(re.findall(r"^\| `([\w.]+)` \|", page, re.MULTILINE))
    schema = _schema_keys()
    assert not schema - listed, (
        f"keys missing from docs/configuration.md: {sorted(schema - listed)}"
    )
    assert not listed - schema, (
        f"docs/configuration.md lists unknown keys: {sorted(listed - schema)}"
    )


def test_readme_and_changelog_links_resolve():
    """mkdocs checks the pages of docs/; the README and the changelog are read on
    their own (their relative links must name files that exist)."""
    for page in (ROOT / "README.md", ROOT / "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
