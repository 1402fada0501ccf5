"""What each package may import, read statically (ast) from every .py file of its folder.

The runtime checks (test_gateway_service.py::test_gateway_imports_stay_light,
test_config_cli.py) see only the modules one code path loads; these see every import
statement, including the lazy ones inside functions and `importlib.import_module("...")`
with a literal name, so a dependency cannot slip in through a rarely taken branch.

- `ballpass.stream` never imports the simulators nor the development tools (benchmarks,
  fleet evaluation): the service runs on real plant data.
- `ballpass.gateway` never imports the stream, the simulators, the development tools, nor
  the stream's heavy libraries (numba, scipy, river): it runs on small boards with the core
  dependencies only (the simulated driver is found by entry point, never imported).
- `ballpass.models` imports numpy and the standard library only.
- The production packages never start processes (`subprocess`), except the launchers
  listed in `SUBPROCESS_ALLOWED`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = {  # folder -> import name (pyproject.toml [tool.setuptools.package-dir])
    "ballpass": "ballpass",
    "models": "ballpass.models",
    "gateway": "ballpass.gateway",
    "stream": "ballpass.stream",
}

FORBIDDEN = {
    "stream": ("ballpass.simulators", "ballpass.devtools"),
    "gateway": ("ballpass.stream", "ballpass.simulators", "ballpass.devtools",
                "numba", "scipy", "river"),
}

MODELS_ALLOWED = ("numpy", "ballpass.models")  # plus sys.stdlib_module_names

MODELS_EXCEPTIONS = {
    # The local floor of the shaft-speed spectrum is scipy's median filter: the numpy
    # equivalent (a median over sliding_window_view) gives the same values but is 10-20×
    # slower (4 ms vs 0.4 ms at 4097 bins, 27 ms vs 1.3 ms at 32769, measured), and the
    # estimate runs per window on the stream, the only package that calls it.
    "models/speed.py": {"scipy.ndimage"},
}

SUBPROCESS_ALLOWED = {
    # Launch mosquitto / influxd / victoria-metrics for the tests, the demo and `ballpass
    # broker`, by design (docs/operations.md).
    "ballpass/services.py",
    # `ballpass demo` starts the gateway and stream processes it shows.
    "ballpass/demo.py",
}


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """The import name of `path` (under `root`) and whether it is a package's `__init__`."""
    rel = path.relative_to(root)
    parts = list(rel.with_suffix("").parts)
    is_init = parts[-1] == "__init__"
    if is_init:
        parts = parts[:-1]
    return ".".join([PACKAGES[parts[0]], *parts[1:]]), is_init


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) for every module `path` imports. `from a import b` yields both `a`
    and `a.b` (b may be a submodule); relative imports are resolved."""
    name, is_init = module_name(path, root)
    package = name if is_init else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("__import__", "import_module")))):
            found.append((node.lineno, node.args[0].value))
    return found


def matches(module: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def files(folder: str) -> list[Path]:
    found = sorted((ROOT / folder).rglob("*.py"))
    assert found, f"no .py files under {folder}/"  # a renamed folder must not pass vacuously
    return found


def where(path: Path, line: int, module: str) -> str:
    return f"{path.relative_to(ROOT)}:{line}: {module}"


def test_the_scanner_sees_lazy_relative_and_dynamic_imports(tmp_path: Path) -> None:
    # The rules below are only as good as `imports`: it must see every form.
    (tmp_path / "stream" / "sub").mkdir(parents=True)
    probe = tmp_path / "stream" / "sub" / "probe.py"
    probe.write_text("import os.path\n"
                     "from .. import pipeline\n"
                     "from . import sibling\n"
                     "def f():\n"
                     "    from ballpass import simulators\n"
                     "    import importlib\n"
                     "    return importlib.import_module('ballpass.devtools.bench')\n")
    found = {m for _, m in imports(probe, tmp_path)}
    assert {"os.path", "ballpass.stream.pipeline", "ballpass.stream.sub.sibling",
            "ballpass.simulators", "ballpass.devtools.bench"} <= found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_package_never_imports_what_it_must_not(folder: str) -> None:
    bad = [where(p, line, m) for p in files(folder) for line, m in imports(p)
           if matches(m, FORBIDDEN[folder])]
    assert not bad, f"ballpass.{folder} must not import {FORBIDDEN[folder]}:\n" + "\n".join(bad)


def test_models_import_numpy_and_the_standard_library_only() -> None:
    bad = []
    for p in files("models"):
        allowed = MODELS_EXCEPTIONS.get(str(p.relative_to(ROOT)), set())
        bad += [where(p, line, m) for line, m in imports(p)
                if m.split(".")[0] not in sys.stdlib_module_names
                and not matches(m, MODELS_ALLOWED) and not matches(m, allowed)]
    assert not bad, "ballpass.models imports beyond numpy and the stdlib:\n" + "\n".join(bad)


def test_production_packages_start_no_processes() -> None:
    bad = [where(p, line, m) for folder in PACKAGES for p in files(folder)
           if str(p.relative_to(ROOT)) not in SUBPROCESS_ALLOWED
           for line, m in imports(p) if matches(m, ("subprocess",))]
    assert not bad, "subprocess outside the launchers:\n" + "\n".join(bad)
    # Every exception still needs it (a stale entry would hide a new use there).
    for rel in SUBPROCESS_ALLOWED:
        assert any(matches(m, ("subprocess",)) for _, m in imports(ROOT / rel)), rel
