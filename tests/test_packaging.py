"""The wheel carries the files the code reads at run time and the `py.typed` marker
(PEP 561: type checkers of projects that use ballpass read its annotations)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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
    names = set(build_wheel(tmp_path).namelist())
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
