"""Owner-only files whatever the umask: body store, key snapshot and the helpers behind them."""

from __future__ import annotations

import os
import stat

import pytest
from helicone_core.bodies import LocalBodyStore
from helicone_core.filemodes import open_private, private_dir, write_private
from helicone_core.key_directory import KeyDirectory
from helicone_core.metrics import ServiceMetrics


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o277], ids=["umask000", "umask022", "umask277"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_helpers_set_the_modes_themselves(tmp_path, umask):
    nested = private_dir(tmp_path / "a" / "b" / "c")
    assert [mode(p) for p in (tmp_path / "a", tmp_path / "a" / "b", nested)] == [0o700] * 3
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o755)
    assert mode(private_dir(loose)) == 0o700  # an existing directory is tightened
    write_private(nested / "f", b"x")
    assert mode(nested / "f") == 0o600 and (nested / "f").read_bytes() == b"x"
    os.close(open_private(nested / "g"))
    assert mode(nested / "g") == 0o600


async def test_local_bodies_are_owner_only(tmp_path, umask):
    store = LocalBodyStore(tmp_path / "bodies")
    await store.start()
    await store.put("org/2026/01/req.json", b"{}", "application/json")
    root = tmp_path / "bodies"
    assert mode(root) == 0o700
    assert [mode(root / d) for d in ("org", "org/2026", "org/2026/01")] == [0o700] * 3
    assert mode(root / "org/2026/01/req.json") == 0o600
    assert await store.get("org/2026/01/req.json") == b"{}"


def test_key_snapshot_is_owner_only(tmp_path, umask):
    snapshot = tmp_path / "keys" / "svc.snapshot.json"
    keys = KeyDirectory("postgresql://unused", snapshot, ServiceMetrics("filemodes"))
    keys._save_snapshot({"hash": "org"})
    assert mode(snapshot.parent) == 0o700 and mode(snapshot) == 0o600
