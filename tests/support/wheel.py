"""Builds a package's wheel the way `pip wheel --no-build-isolation` does, without pip: the PEP 517
backend its pyproject.toml names, called in a process of its own (pip's own start-up and checks are
most of a build's seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BUILD = """
import importlib, sys, tomllib
backend = tomllib.load(open("pyproject.toml", "rb"))["build-system"]["build-backend"]
print("built:", importlib.import_module(backend).build_wheel(sys.argv[1]))
"""


def build_wheel(source: Path, out: Path, timeout: float = 300) -> Path:
    """The wheel of the package at `source` (a copy: the build leaves build/ and egg-info there), in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", BUILD, str(out)], cwd=source, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [name] = [line[len("built: "):] for line in done.stdout.splitlines() if line.startswith("built: ")]
    return out / name
