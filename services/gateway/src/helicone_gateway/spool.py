"""Bounded on-disk spool for log events that could not be published to Kafka.

One file per event, named so that lexical order is arrival order; written atomically, owner-only
(directory 0700, files 0600: events carry request and response bodies).
When the spool is full, new events are dropped (and counted) rather than filling the disk.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

from helicone_core.filemodes import open_private, private_dir

SUFFIX = ".evt"


class Spool:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        private_dir(self.root)
        for stale in self.root.glob(".tmp-*"):
            stale.unlink(missing_ok=True)
        self._bytes = sum(p.stat().st_size for p in self.root.glob("*" + SUFFIX))
        self._count = len(list(self.root.glob("*" + SUFFIX)))

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def count(self) -> int:
        return self._count

    def write(self, data: bytes) -> bool:
        """Stores one event; False if the spool is full."""
        with self._lock:
            if self._bytes + len(data) > self.max_bytes:
                return False
            self._bytes += len(data)
            self._count += 1
        name = f"{time.time_ns():020d}-{secrets.token_hex(4)}{SUFFIX}"
        tmp = self.root / f".tmp-{name}"
        try:
            with os.fdopen(open_private(tmp), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._bytes -= len(data)
                self._count -= 1
            raise
        return True

    def oldest(self, limit: int) -> list[Path]:
        return sorted(self.root.glob("*" + SUFFIX))[:limit]

    def remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return
        with self._lock:
            self._bytes -= size
            self._count -= 1
