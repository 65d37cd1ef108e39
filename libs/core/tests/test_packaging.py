"""The installed package (the image installs a wheel, not the checkout) carries the data files read at start-up."""

import shutil
import zipfile
from pathlib import Path

from tests.support.wheel import build_wheel

CORE = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_provider_table_and_the_cost_registry(tmp_path):
    src = tmp_path / "core"
    shutil.copytree(CORE, src, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))
    wheel = build_wheel(src, tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"helicone_core/providers.json", "helicone_core/cost_registry.json"} <= set(names)
