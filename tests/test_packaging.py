"""The wheel carries the files the code reads at run time and the `py.typed` marker
(PEP 561: type checkers of projects that use ballpass read its annotations)."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import ballpass

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "ballpass", "models", "gateway", "stream",
           "simulators", "devtools")


def build_wheel(tmp_path: Path) -> zipfile.ZipFile:
    # Built from a copy: setuptools' build/ folder in the checkout would keep files from
    # an older layout and put them into the wheel. Offline: the venv's setuptools.
    src = tmp_path / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (src).mkdir(exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                        "--no-build-isolation", "--no-index", "-q", "-w", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (wheel,) = out.glob("ballpass-*.whl")
    return zipfile.ZipFile(wheel)


def test_wheel_ships_py_typed_and_the_data_files(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = set(wheel.namelist())
    # The version comes from ballpass.__version__ (pyproject's dynamic version).
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert f"\nVersion: {ballpass.__version__}\n" in wheel.read(metadata).decode()
    expected = {"ballpass/py.typed", "ballpass/mosquitto.conf",
                "ballpass/stream/online/trend_calibration.json",
                "ballpass/devtools/bench.py", "ballpass/devtools/fleet_eval.py"}
    expected |= {f"ballpass/simulators/scenarios/{p.name}"
                 for p in (ROOT / "simulators" / "scenarios").glob("*.toml")}
    expected |= {f"ballpass/stream/web/static/{p.name}"
                 for p in (ROOT / "stream" / "web" / "static").iterdir()}
    assert len(expected) > 6  # the globs found the scenarios and static files
    assert not expected - names, sorted(expected - names)
    # The benchmarks left the production packages (tests/test_import_boundaries.py).
    assert not {n for n in names if n.startswith(("ballpass/stream/bench", "ballpass/gateway/bench",
                                                  "ballpass/stream/online/fleet"))}


def test_the_version_is_written_in_one_place() -> None:
    assert importlib.metadata.version("ballpass") == ballpass.__version__
    r = subprocess.run([sys.executable, "-m", "ballpass", "--version"], capture_output=True,
                       text=True, timeout=60)
    assert r.stdout.strip() == f"ballpass {ballpass.__version__}", r
    # No second copy to forget at the next release (the docs' payload examples aside).
    literal = re.compile(rf"""["']{re.escape(ballpass.__version__)}["']""")
    copies = [str(p.relative_to(ROOT)) for name in SOURCES for p in
              ([ROOT / name] if (ROOT / name).is_file() else (ROOT / name).rglob("*"))
              if p.suffix in (".py", ".toml", ".cfg") and literal.search(p.read_text())]
    assert copies == ["ballpass/__init__.py"], copies
