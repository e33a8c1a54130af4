"""The runtime must pip-install on a Raspberry Pi: importing it may pull in numpy, numba and soundfile only."""

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("onnx", "onnxruntime", "torch", "scipy", "librosa", "sentencepiece", "tinyasr_convert")


# Numba itself imports scipy when it is installed, so the child process hides these packages,
# as on a Raspberry Pi with only the runtime's dependencies: importing one fails as if absent.
BLOCKER = f"""
import importlib.abc, json, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HEAVY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by test_imports)", name=name)
sys.meta_path.insert(0, Absent())
"""


def _modules_after(statement: str):
    code = f"{BLOCKER}\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("statement", [
    "import tinyasr; from tinyasr.engine import offline, streaming; from tinyasr.features import frontend",
    "import tinyasr; from tinyasr.audio import io; from tinyasr.decoding import ctc, classification",
    "import tinyasr; from tinyasr.pipeline import recognizer, online, vad, long_form",
    "import tinyasr; from tinyasr.format import container; from tinyasr.cli import info; from tinyasr.features import streaming",
    "import tinyasr; tinyasr.Recognizer, tinyasr.Result, tinyasr.load_model, tinyasr.set_num_threads",
    "import tinyasr.cli.main",
    "from tinyasr import batch; from tinyasr.decoding import beam, lm, hotwords; from tinyasr.pipeline import formats",
])
def test_runtime_imports_no_converter_dependencies(statement):
    loaded = _modules_after(statement)
    assert not [m for m in HEAVY if m in loaded]


# Where each public name is defined (docs/design.md): tinyasr.X must be the object that module defines.
PUBLIC_HOMES = {
    "load_model": "tinyasr.engine.offline",
    "set_num_threads": "tinyasr.engine.threads",
    "Recognizer": "tinyasr.pipeline.recognizer",
    "OnlineStream": "tinyasr.pipeline.online",
    "transcribe_long": "tinyasr.pipeline.recognizer",
    "BeamSearch": "tinyasr.decoding.specs",
    "Greedy": "tinyasr.decoding.specs",
    **{name: "tinyasr.decoding.results"
       for name in ("Result", "Token", "Word", "Classification", "FrameClassification", "Segment")},
}


def test_public_api_and_version():
    import tinyasr

    assert sorted(tinyasr.__all__) == sorted(["__version__", *PUBLIC_HOMES])
    for name, home in PUBLIC_HOMES.items():
        value = getattr(tinyasr, name)
        assert value.__module__ == home, f"tinyasr.{name} is defined in {value.__module__}, not in {home}"
        assert value is getattr(importlib.import_module(home), name), f"tinyasr.{name} is not {home}.{name}"
        assert name in dir(tinyasr)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{tinyasr.__version__}"' in pyproject
    with pytest.raises(AttributeError, match="no_such_name"):
        tinyasr.no_such_name


# ----------------------------------------------------------------------------- the import graph, from the source

SOURCE_PACKAGES = {"tinyasr": ROOT / "tinyasr", "tinyasr_convert": ROOT / "converters"}  # import name -> folder


def _source_modules():
    """{module name: file} for every module of tinyasr/ and converters/ (installed as tinyasr_convert)."""
    modules = {}
    for package, folder in SOURCE_PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = (package,) + path.relative_to(folder).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


class _ImportStatements(ast.NodeVisitor):
    """(dotted name, line, inside a function) for every import statement of a module, wherever it stands."""

    def __init__(self, package: str):
        self.package, self.depth, self.found = package, 0, []

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node):
        self.found += [(alias.name, node.lineno, self.depth > 0) for alias in node.names]

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:  # relative: from the package, or level - 1 packages above it
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
        self.found += [(f"{base}.{alias.name}", node.lineno, self.depth > 0) for alias in node.names]


def _import_graph():
    """{module: {imported module: (file:line, inside a function)}} within tinyasr and tinyasr_convert.

    ``from package import x`` points at package.x when that is a module, else at package (the longest
    module prefix of the dotted name).  The implicit import of a module's parent packages is no edge.
    """
    modules = _source_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        visitor = _ImportStatements(package)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        edges = graph[name] = {}
        for target, line, in_function in visitor.found:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.setdefault(target, (f"{path.relative_to(ROOT)}:{line}", in_function))
    return graph


def _shortest_cycle(graph, start):
    """The shortest import path from ``start`` back to itself, or None."""
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for target in graph[path[-1]]:
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                paths.append(path + [target])
    return None


def test_no_import_cycles():
    """Module-level and function-level imports both count: an import inside a function hides a circle."""
    graph = _import_graph()
    cycles = set()
    for module in graph:
        cycle = _shortest_cycle(graph, module)
        if cycle:
            first = cycle.index(min(cycle[:-1]))  # one rotation per cycle
            cycles.add(tuple(cycle[first:-1] + cycle[:first + 1]))
    described = []
    for cycle in sorted(cycles):
        steps = [cycle[0]]
        for a, b in zip(cycle, cycle[1:]):
            where, in_function = graph[a][b]
            steps.append(f"{b} ({where}{', in a function' if in_function else ''})")
        described.append(" -> ".join(steps))
    assert not described, f"{len(described)} import cycle(s):\n" + "\n".join(described)


def test_pyproject_lists_every_package_folder():
    """setuptools installs only the packages listed, so a new folder left out would be missing from a wheel."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"tinyasr_convert": "converters"}
    folders = set()
    for package, folder in SOURCE_PACKAGES.items():
        for path in folder.rglob("*.py"):
            relative = path.parent.relative_to(folder).parts
            folders.add(".".join((package,) + relative))
            assert (path.parent / "__init__.py").exists(), f"{path.parent.relative_to(ROOT)} has no __init__.py"
    listed = set(setuptools["packages"])
    assert listed == folders, (f"package folders missing from pyproject.toml's packages: {sorted(folders - listed)}; "
                               f"listed but not a package folder: {sorted(listed - folders)}")


def test_the_runtime_reaches_the_converter_only_through_the_cli_dispatch():
    """tinyasr/ imports tinyasr_convert nowhere at module level; the CLI names its modules and imports them when
    their command runs."""
    found = []
    for name, path in _source_modules().items():
        if name.split(".")[0] != "tinyasr":
            continue
        tree = ast.parse(path.read_text())
        visitor = _ImportStatements(name)
        visitor.visit(tree)
        where = path.relative_to(ROOT)
        found += [f"{where}:{line} imports {target}{' in a function' if in_function else ''}"
                  for target, line, in_function in visitor.found if target.split(".")[0] == "tinyasr_convert"]
        found += [f"{where}:{node.lineno} names module {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and re.fullmatch(r"tinyasr_convert(\.\w+)*", node.value)]
    dispatch = [line for line in found if line.startswith("tinyasr/cli/main.py:") and " names module " in line]
    assert dispatch, "the CLI's convert / download commands no longer name their tinyasr_convert modules"
    assert sorted(found) == sorted(dispatch), "tinyasr/ reaches tinyasr_convert outside the CLI dispatch:\n" + \
        "\n".join(sorted(set(found) - set(dispatch)))


# Child process: numpy's BLAS set to a count tinyasr never picks, as an app might, then tinyasr imported
# (kernels, both engines, the CLI module) and a model run; threadpoolctl (not tinyasr) reads the pools.
NO_SIDE_EFFECTS = """
import json, os
import numba, numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
threadpool_limits(3, user_api="blas")
numpy_blas = [i["filepath"] for i in threadpool_info() if i["user_api"] == "blas"]  # only numpy's is loaded


def state():
    try:
        numba_pool = numba.threading_layer()
    except ValueError:  # "Threading layer is not initialized"
        numba_pool = None
    return {"env": dict(os.environ), "numba_pool": numba_pool,
            "blas": [i["num_threads"] for i in threadpool_info() if i["filepath"] in numpy_blas]}


before = state()
import tinyasr, tinyasr.kernels, tinyasr.cli.main
from tinyasr.engine import offline, streaming, threads
from tinyasr.pipeline import recognizer, online
tinyasr.Recognizer, tinyasr.load_model, tinyasr.set_num_threads
imported = state()
model = offline.load_model("tinyasr/models/digits.tasr")
model.run({model.inputs[0].name: np.zeros((1, 64, 40), np.float32)})
print(json.dumps([before, imported, state()]))
"""


def test_import_sets_no_environment_variable_and_no_thread_pool():
    """Importing tinyasr leaves the environment and numpy's BLAS alone; the first model run sets BLAS to 1."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "TINYASR_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", NO_SIDE_EFFECTS], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, imported, ran = json.loads(done.stdout.strip().splitlines()[-1])
    assert before["blas"] == [3]
    assert imported == before  # no variable (OPENBLAS_CORETYPE, GOMP_SPINCOUNT ...), no pool started or set
    assert ran["blas"] == [1] and ran["env"] == before["env"]  # the run applies the policy, still no variable


def test_only_the_command_bounds_how_long_openmp_workers_spin(monkeypatch, capsys):
    """The tinyasr command owns its process: it sets GOMP_SPINCOUNT unless the user chose a wait policy or a count."""
    from tinyasr.cli.main import main
    from tinyasr.engine.threads import WORKER_SPIN_COUNT

    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.setenv(name, "")  # restored after the test, whatever main() sets
        monkeypatch.delenv(name)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert main(["--version"]) == 0
    assert os.environ.get("GOMP_SPINCOUNT") == str(WORKER_SPIN_COUNT) and "OPENBLAS_CORETYPE" not in os.environ
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    assert main(["--version"]) == 0
    assert os.environ["GOMP_SPINCOUNT"] == "5"
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert main(["--version"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ
