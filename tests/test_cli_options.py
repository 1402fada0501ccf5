"""Out-of-range options exit 2 naming the option, not with a traceback from deep inside
the simulation or a file write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def ballpass(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ballpass", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("args", "message"), [
    (["simulate", "agitators", "--fs", "0"], "argument --fs: must be a finite number > 0"),
    (["simulate", "agitators", "--fs", "nan"], "argument --fs: must be a finite number > 0"),
    (["evaluate-fleet", "--seeds", "0", "--quiet"], "argument --seeds: must be >= 1, got 0"),
    (["evaluate-fleet", "--seeds", "1", "--horizon-days", "-1", "--quiet"],
     "argument --horizon-days: must be a finite number > 0, got -1"),
])
def test_bad_option_exits_2_naming_it(tmp_path: Path, args: list[str], message: str) -> None:
    if args[0] == "simulate":
        args = [*args, "--out", str(tmp_path / "agitators")]
    r = ballpass(*args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "agitators").exists()


def test_simulate_site_out_is_a_directory(tmp_path: Path) -> None:
    r = ballpass("simulate", "site", "--reactors", "2", "--out", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert f"error: --out {tmp_path}: Is a directory" in r.stderr
    assert "Traceback" not in r.stderr
