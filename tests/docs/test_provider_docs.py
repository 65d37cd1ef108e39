"""The README's providers table is the provider table's (scripts/provider_docs.py writes it)."""

import subprocess
import sys
from pathlib import Path

from helicone_core.providers import PROVIDER_TABLE

ROOT = Path(__file__).resolve().parents[2]


def test_readme_providers_table_is_generated_from_the_table():
    done = subprocess.run([sys.executable, "scripts/provider_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    readme = (ROOT / "README.md").read_text()
    for p in PROVIDER_TABLE.values():
        assert f"| {p.label} | `/{p.name}` |" in readme
