"""`python -m ballpass.devtools.typecheck`: mypy over every package of ballpass.

The import names are mapped onto folders (pyproject.toml `[tool.setuptools.package-dir]`:
`ballpass.stream` is `stream/`, ...), and the editable install resolves them with an
import hook that mypy cannot follow. So this builds the layout mypy expects, a tree of
symbolic links `build/typecheck/ballpass/...` into the checkout (rebuilt each run, so new
files are seen), and runs `mypy` with the `[tool.mypy]` settings (`mypy_path` points at the
tree, `packages = ["ballpass"]`). Extra arguments go to mypy. Exit status is mypy's.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"


def link_tree(root: Path = ROOT, tree: Path = TREE) -> Path:
    """(Re)build `tree` so that `tree/ballpass/X/...` is the checkout's mapped folder."""
    mapping = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["setuptools"]["package-dir"]
    shutil.rmtree(tree, ignore_errors=True)
    for name, folder in sorted(mapping.items()):
        target = tree.joinpath(*name.split("."))
        if name.count(".") == 0:  # the top package: link its files (subpackages live apart)
            target.mkdir(parents=True)
            for entry in (root / folder).iterdir():
                if entry.name != "__pycache__":
                    (target / entry.name).symlink_to(entry)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(root / folder, target_is_directory=True)
    return tree


def main(argv: list[str]) -> int:
    from mypy import api

    link_tree()
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), *argv])
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
