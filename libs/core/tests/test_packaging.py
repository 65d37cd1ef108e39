"""The installed package (the image installs a wheel, not the checkout) carries the data files read at start-up."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

CORE = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_provider_table_and_the_cost_registry(tmp_path):
    src = tmp_path / "core"
    shutil.copytree(CORE, src, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"helicone_core/providers.json", "helicone_core/cost_registry.json"} <= set(names)
