"""The layout keeps its promises: the core never imports the benchmark package, no module reaches into another's
private names, the speed paths branch only inside the engines, and `run_job` fits on a screen."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "ptuning"
#: the front end may import the benchmark package (for `ptuning bench`); the core may not
FRONT_END = {PACKAGE / "cli.py"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def dotted(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported from, names) of every import statement in the file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def test_the_core_never_imports_the_benchmark_package():
    core = [p for p in modules() if "speed" not in p.relative_to(PACKAGE).parts and p not in FRONT_END]
    offenders = [(dotted(p), m) for p in core for m, names in imports(p)
                 if m.startswith("ptuning.speed") or (m == "ptuning" and "speed" in names)]
    assert offenders == []
    # and at run time: running a job loads nothing of it
    code = "import sys, ptuning.cli, ptuning.run.runner, ptuning.report.tables, ptuning.report.plots; " \
           "print(sorted(m for m in sys.modules if m.startswith('ptuning.speed')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_the_checker_above_sees_an_import_of_the_benchmark_package(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ptuning.speed.bench import run_bench\n    import ptuning.speed.gpucheck\n")
    assert [m for m, _ in imports(bad)] == ["ptuning.speed.bench", "ptuning.speed.gpucheck"]


def private_uses(path: Path) -> list[str]:
    """Private names of other ptuning modules that `path` uses: `from ptuning.x import _y`, or `x._y` where `x` is a
    ptuning module it imported."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ptuning"):
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{node.module}.{a.name}")
                target = f"{node.module}.{a.name}"
                if (PACKAGE.parent / (target.replace(".", "/") + ".py")).exists() or (PACKAGE.parent / target.replace(".", "/")).is_dir():
                    aliases[a.asname or a.name] = target
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("ptuning") and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    own = dotted(path) if path.is_relative_to(REPO) else ""
    return [name for name in found if not (own and name.startswith(own + "."))]


def test_no_module_uses_another_modules_private_names():
    offenders = {dotted(p): private_uses(p) for p in modules()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_private_name_checker_finds_both_forms(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from ptuning.engine.fast import _core\nfrom ptuning.engine import fast\nfast._hidden()\n")
    assert private_uses(bad) == ["ptuning.engine.fast._core", "ptuning.engine.fast._hidden"]


def test_only_the_engines_branch_on_the_speed_path():
    outside = [p for p in modules() if "engine" not in p.relative_to(PACKAGE).parts]
    pattern = re.compile(r"\.fast\b(?!\s*import)|\bplan\.(graphs|compile|fused_adamw|sync_every)\b|isinstance\([^)]*(Fast|Faithful)Engine")
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in outside for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line.split("#")[0]) and "from ptuning.engine" not in line]
    assert offenders == []


def test_run_job_fits_on_a_screen():
    from ptuning.run import runner

    lines = inspect.getsource(runner.run_job).splitlines()
    assert len(lines) <= 60, len(lines)
    # it reads as prepare -> restore -> train and evaluate -> record
    body = "\n".join(lines)
    assert body.index("prepare(run)") < body.index("restore(run") < body.index("train_and_evaluate(") < body.index("finish(run")


def test_tests_mirror_the_package_layout():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == {"cluster", "engine", "methods", "report", "run", "speed", "testing"}
    assert packages <= {p.name for p in (REPO / "tests").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
