"""The gateway's on-disk event journal: every log event is appended here before it is sent to
Kafka and stays until the ingest consumer group has committed past it.

That makes a broker that forgets (the memory-only embedded broker restarted, a Kafka topic
recreated) or a gateway killed with SIGKILL lose nothing: whatever is still in the journal is sent
again, and ingest dedupes by (org, request id).

Layout: numbered segment files ``<seq>.seg`` in one directory, each a magic header followed by
records ``[u32 length][u32 crc32][u16 key length][key][event]``. A torn or corrupt tail (a crash
mid-write) is cut off when the journal is opened. Each batch of events is one ``write()`` and one
``fsync`` (group commit, EventPublisher asks for it) before any of them is sent, and the first batch of
a new segment also fsyncs the directory (the new file's name), so neither a killed process nor a power
loss loses an appended event; ``fsync`` also runs when a segment is sealed.

This class does file I/O and bookkeeping only; EventPublisher decides what to send and when.
It is thread-safe: file work runs on the publisher's journal thread (one thread: fsync runs outside
the lock, so acks arriving on the loop never wait for the disk, and only that thread closes files).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helicone_core.filemodes import open_private, private_dir

log = logging.getLogger(__name__)

MAGIC = b"HLJ1"
SUFFIX = ".seg"
_HEADER = struct.Struct(">II")  # payload length, crc32 of the payload
_KEYLEN = struct.Struct(">H")
FILE_MODE = 0o600


class JournalInUse(RuntimeError):
    """Another process owns this journal directory."""


class Appended(list):
    """Journal.append's answer: a RecordRef per record, or None where it was not journaled."""

    failed = 0  # records not journaled because the disk refused them (the rest of the Nones: journal full)
    error: OSError | None = None  # that refusal, or a failed fsync of records that are journaled


@dataclass(eq=False)  # identity: segments are compared as objects, never by content
class Segment:
    seq: int
    path: Path
    size: int = 0  # bytes, header included
    records: int = 0
    sealed: bool = False
    opened_at: float = field(default_factory=time.monotonic)
    # Delivery state for the current broker epoch: record indices acknowledged or in flight, and
    # the highest acknowledged offset per partition (what ingest must commit past before trimming).
    acked: set[int] = field(default_factory=set)
    inflight: set[int] = field(default_factory=set)
    max_offset: dict[int, int] = field(default_factory=dict)
    min_offset: dict[int, int] = field(default_factory=dict)
    # Record indices the consumer group is known to have committed (see Journal.trim_acked): they
    # stay acknowledged in every later broker epoch, so a log reset never sends them again.
    consumed: set[int] = field(default_factory=set)

    @property
    def fully_acked(self) -> bool:
        return len(self.acked) >= self.records

    def committed_past(self, committed: dict[int, int], floor: dict[int, int]) -> bool:
        """True when the consumer group's committed offset is past every record of this segment,
        and every record lies at or above `floor`: the first offset the group was seen to have
        committed in this generation. An offset committed before these records existed in this
        log (a consumer carrying its offset over from a log the broker lost) proves nothing."""
        return self.fully_acked and all(
            committed.get(p, -1) > off and self.min_offset.get(p, -1) >= floor.get(p, -1)
            for p, off in self.max_offset.items()
        )


@dataclass(frozen=True)
class RecordRef:
    segment: Segment
    index: int


def encode_record(key: bytes, data: bytes) -> bytes:
    payload = _KEYLEN.pack(len(key)) + key + data
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _read_records(path: Path) -> tuple[list[tuple[bytes, bytes]], int, bool]:
    """(records, bytes of the good prefix, whether anything after it was bad)."""
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        return [], 0, bool(raw)
    pos, out = len(MAGIC), []
    while pos < len(raw):
        if pos + _HEADER.size > len(raw):
            return out, pos, True
        length, crc = _HEADER.unpack_from(raw, pos)
        start, end = pos + _HEADER.size, pos + _HEADER.size + length
        payload = raw[start:end]
        if end > len(raw) or zlib.crc32(payload) != crc or length < _KEYLEN.size:
            return out, pos, True
        (klen,) = _KEYLEN.unpack_from(payload)
        out.append((payload[_KEYLEN.size : _KEYLEN.size + klen], payload[_KEYLEN.size + klen :]))
        pos = end
    return out, pos, False


def take_lock(directory: Path) -> int | None:
    """The journal directory's lock (made private first), taken: an open fd to close to release it, or None if
    another process holds it. Read-only is enough for flock (a lock file an odd umask left 0400 still opens);
    0600 whatever the umask."""
    private_dir(directory)
    fd = open_private(directory / ".lock", os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Journal:
    def __init__(self, root: Path, max_bytes: int, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._dirty = False
        self._new_file = False  # a segment was created since the directory was last fsynced
        self.segments: list[Segment] = []
        self.cut_tails = 0  # segments whose torn or corrupt tail was cut off when opening
        self.evicted_segments = 0
        self.generation = 0  # bumped when the broker lost what it acknowledged
        self._lock_fd: int | None = None

    def open(self) -> Journal:
        """Takes ownership of the directory and reads back what a previous run left."""
        # One owner per directory: two gateways appending to the same segments would corrupt them.
        self._lock_fd = take_lock(self.root)
        if self._lock_fd is None:
            raise JournalInUse(
                f"the event journal {self.root} is in use by another gateway process; give each gateway its own "
                "HELICONE_JOURNAL_DIR (or data dir)"
            )
        self._recover()
        return self

    # ---- state -----------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._lock_fd is not None

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def record_count(self) -> int:
        return sum(s.records for s in self.segments)

    def unacked_count(self) -> int:
        with self._lock:
            return sum(s.records - len(s.acked) for s in self.segments)

    def acked_partitions(self) -> set[int]:
        """Partitions holding records the broker acknowledged in this generation."""
        with self._lock:
            return {p for s in self.segments for p in s.max_offset}

    # ---- writes ----------------------------------------------------------------------
    def append(self, records: list[tuple[bytes, bytes]], *, inflight: bool, sync: bool = False) -> Appended:
        """Appends the records in order; None for each one that is not journaled: it did not fit
        (journal full), or the disk refused it (``error`` and ``failed`` of the answer say so).
        With ``inflight`` the records are marked as being sent, so a resend pass skips them. With
        ``sync`` the batch is fsynced before this returns (group commit: one write and one fsync
        for the whole batch).

        A write that fails (a full disk) leaves nothing of its records behind: the segment's file is
        cut back to where they began and sealed, and its counts are what the file holds, so a later
        record's index is its place in the file (the resender claims records by that place) and
        recovery finds no torn record before later ones. A failed fsync leaves the records journaled
        (written, and sent as usual) with ``error`` set: they may not survive a power loss."""
        refs = Appended()
        fd = None
        with self._lock:
            batch: list[bytes] = []
            seg: Segment | None = None  # the segment the records not yet written go to
            mark = first = start = 0  # where they begin: in `records`, and in seg (index, bytes)
            try:
                seg = self._active_locked()
                first, start = seg.records, seg.size
                for key, data in records:
                    rec = encode_record(key, data)
                    if seg.size + len(rec) > self.segment_bytes and seg.records:
                        self._write_locked(seg, batch)
                        self._seal_locked(seg)
                        batch, seg, mark = [], None, len(refs)  # those are on disk now
                        seg = self._active_locked()
                        first, start = seg.records, seg.size
                    if not self._room_locked(len(rec)):
                        refs.append(None)
                        continue
                    batch.append(rec)
                    ref = RecordRef(seg, seg.records)
                    seg.records += 1
                    seg.size += len(rec)
                    if inflight:
                        seg.inflight.add(ref.index)
                    refs.append(ref)
                self._write_locked(seg, batch)
            except OSError as exc:
                if seg is not None:
                    self._undo_locked(seg, first, start)
                refs[mark:] = [None] * (len(records) - mark)
                refs.failed, refs.error = len(records) - mark, exc
                return refs
            new_file = False
            if sync and self._dirty and self._fd is not None:
                fd, self._dirty = self._fd, False
                new_file, self._new_file = self._new_file, False
        if fd is not None:
            # outside the lock: the loop's acked()/claim() must not wait for the disk. Only this
            # (the journal's one file thread) closes the fd, so it is still open here.
            try:
                os.fsync(fd)
                if new_file:
                    self._sync_dir()
            except OSError as exc:
                refs.error = exc
        return refs

    def _sync_dir(self) -> None:
        """fsyncs the directory: a new segment's name survives a power loss only once it is (its records,
        fsynced in the file, would otherwise be in a file no directory names)."""
        dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _undo_locked(self, seg: Segment, first: int, start: int) -> None:
        """Forgets the records of `seg` from index `first` (byte `start`) on, whose write failed, and
        seals it: its file is cut back to `start` (if even that fails, the cut records lie past the
        counts, where neither the resender nor recovery mistakes them for later ones)."""
        for index in range(first, seg.records):
            seg.inflight.discard(index)
        seg.records, seg.size = first, start
        seg.sealed = True
        if self._fd is not None and self.segments and self.segments[-1] is seg:
            fd, self._fd, self._dirty = self._fd, None, False
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            with contextlib.suppress(OSError):
                os.close(fd)
        elif self.segments and self.segments[-1] is seg:  # its seal's fsync failed (and closed it)
            with contextlib.suppress(OSError):
                os.truncate(seg.path, start)

    def _room_locked(self, need: int) -> bool:
        """Makes room by evicting the oldest sealed segments Kafka has fully acknowledged (only
        the consumer's commit was still missing); False if there is still not enough."""
        total = sum(s.size for s in self.segments)
        while total + need > self.max_bytes:
            victim = next((s for s in self.segments if s.sealed and s.fully_acked), None)
            if victim is None:
                return False
            total -= victim.size
            self._delete_locked(victim)
            self.evicted_segments += 1
            log.warning("journal full: evicted segment %d (acknowledged by Kafka, not yet committed by ingest)", victim.seq)
        return True

    def _write_locked(self, seg: Segment, batch: list[bytes]) -> None:
        if not batch:
            return
        data = b"".join(batch)
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._dirty = True

    def _active_locked(self) -> Segment:
        if self.segments and not self.segments[-1].sealed and self._fd is not None:
            return self.segments[-1]
        seq = self.segments[-1].seq + 1 if self.segments else 1
        path = self.root / f"{seq:012d}{SUFFIX}"
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)  # 0600 whatever the umask
        try:
            os.write(fd, MAGIC)
        except OSError:  # a full disk: no segment, and no descriptor left open for it
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        self._fd, self._new_file = fd, True
        seg = Segment(seq, path, size=len(MAGIC))
        self.segments.append(seg)
        return seg

    def _seal_locked(self, seg: Segment) -> None:
        if seg.sealed:
            return
        seg.sealed = True
        if self._fd is not None and self.segments and self.segments[-1] is seg:
            fd, self._fd, self._dirty = self._fd, None, False
            try:
                os.fsync(fd)
            finally:  # closed even when the fsync fails: nothing writes to a sealed segment again
                os.close(fd)

    def seal_if_older(self, seconds: float) -> bool:
        """Seals the active segment once it holds records and is older than `seconds`, so that
        a quiet gateway can still trim it."""
        with self._lock:
            if not self.segments:
                return False
            seg = self.segments[-1]
            if seg.sealed or not seg.records or time.monotonic() - seg.opened_at < seconds:
                return False
            self._seal_locked(seg)
            return True

    def seal_active(self) -> None:
        with self._lock:
            if self.segments and not self.segments[-1].sealed and self.segments[-1].records:
                self._seal_locked(self.segments[-1])

    def sync(self) -> None:
        with self._lock:
            fd = self._fd if self._dirty else None
            self._dirty = False
            new_file = fd is not None and self._new_file
            if new_file:
                self._new_file = False
        if fd is not None:
            os.fsync(fd)  # outside the lock, like append's
            if new_file:
                self._sync_dir()

    def close(self) -> None:
        """fsyncs and closes the active segment and releases the lock; a failing disk is logged, not raised:
        the descriptors go whatever happens, so a stop goes on and the next run can take the journal."""
        with self._lock:
            fd, self._fd, self._dirty = self._fd, None, False
            lock_fd, self._lock_fd = self._lock_fd, None
            if self.segments and not self.segments[-1].sealed:
                self.segments[-1].sealed = True
            try:
                if fd is not None:
                    os.fsync(fd)
            except OSError as exc:
                log.error("could not fsync the event journal while closing it (%s): its latest events may not survive "
                          "a power loss", exc)
            finally:
                for one in (fd, lock_fd):  # closing the lock's releases the flock
                    if one is not None:
                        with contextlib.suppress(OSError):
                            os.close(one)

    # ---- delivery bookkeeping (loop side) ----------------------------------------------
    def acked(self, ref: RecordRef, partition: int, offset: int, generation: int) -> None:
        """Records a broker acknowledgement; one from before the broker lost its data is ignored
        (the record is unsent again and goes out once more)."""
        with self._lock:
            if generation != self.generation:
                return
            seg = ref.segment
            seg.inflight.discard(ref.index)
            seg.acked.add(ref.index)
            if offset > seg.max_offset.get(partition, -1):
                seg.max_offset[partition] = offset
            if offset < seg.min_offset.get(partition, offset + 1):
                seg.min_offset[partition] = offset

    def failed(self, ref: RecordRef, generation: int) -> None:
        with self._lock:
            if generation != self.generation:
                return
            ref.segment.inflight.discard(ref.index)

    def drop(self, ref: RecordRef) -> None:
        """A record Kafka can never take (over its record limit): it counts as acknowledged and consumed in
        every generation, so no resend tries it again and its segment can be trimmed."""
        with self._lock:
            seg = ref.segment
            seg.inflight.discard(ref.index)
            seg.acked.add(ref.index)
            seg.consumed.add(ref.index)

    def forget_deliveries(self) -> None:
        """The broker lost what it had acknowledged: every record counts as unsent again, except
        those the consumer group is known to have committed (trim_acked)."""
        with self._lock:
            self.generation += 1
            for s in self.segments:
                s.acked = set(s.consumed)
                s.inflight.clear()
                s.max_offset.clear()
                s.min_offset.clear()

    # ---- reads / trimming ---------------------------------------------------------------
    def pending_segments(self) -> list[Segment]:
        """Segments holding records neither acknowledged nor in flight, oldest first."""
        with self._lock:
            return [s for s in self.segments if len(s.acked) + len(s.inflight) < s.records]

    def claim(self, seg: Segment, index: int) -> RecordRef | None:
        """Marks a record in flight unless it is acknowledged, in flight or trimmed already."""
        with self._lock:
            if index >= seg.records or index in seg.acked or index in seg.inflight or seg not in self.segments:
                return None
            seg.inflight.add(index)
            return RecordRef(seg, index)

    def read(self, seg: Segment) -> list[tuple[bytes, bytes]]:
        """The records of one segment as (key, event); file I/O, run it off the loop."""
        return self._read(seg)[: seg.records]

    def _read(self, seg: Segment) -> list[tuple[bytes, bytes]]:
        try:
            records, _, _ = _read_records(seg.path)
        except FileNotFoundError:
            return []
        return records

    def trim(self, committed: dict[int, int], generation: int, floor: dict[int, int] | None = None) -> int:
        """Deletes sealed segments the consumer group has committed past; returns how many.
        `committed` must have been read in `generation`: offsets from a broker that has since
        forgotten its data say nothing about the acks of its successor."""
        with self._lock:
            if generation != self.generation:
                return 0
            done = [s for s in self.segments if s.sealed and s.committed_past(committed, floor or {})]
            for seg in done:
                self._delete_locked(seg)
        return len(done)

    def trim_acked(self, generation: int) -> int:
        """For when the consumer is known to have committed the whole log: deletes sealed
        segments whose every record the broker acknowledged, and marks the acknowledged records
        of the others consumed (a segment sealed by a hold can mix them with records the hold kept
        back: a log reset must send only those again); returns how many segments it deleted."""
        with self._lock:
            if generation != self.generation:
                return 0
            done = [s for s in self.segments if s.sealed and s.fully_acked]
            for seg in done:
                self._delete_locked(seg)
            for seg in self.segments:
                seg.consumed |= seg.acked
        return len(done)

    def _delete_locked(self, seg: Segment) -> None:
        self.segments.remove(seg)
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass

    def iter_all(self) -> Iterator[tuple[bytes, bytes]]:
        """Every record still in the journal, oldest first (tests and tools)."""
        for seg in list(self.segments):
            yield from self.read(seg)

    # ---- opening ---------------------------------------------------------------------
    def _recover(self) -> None:
        for path in sorted(self.root.glob("*" + SUFFIX)):
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            os.chmod(path, FILE_MODE)  # before the cut: a segment an odd umask left 0400 is writable again
            records, good, bad = _read_records(path)
            if bad:
                cut = path.stat().st_size - good
                self.cut_tails += 1
                log.warning("journal segment %s: cut %d bytes of a torn or corrupt record", path.name, cut)
                if good == 0:
                    path.unlink()
                    continue
                with open(path, "r+b") as f:
                    f.truncate(good)
            if not records:
                path.unlink()
                continue
            self.segments.append(Segment(seq, path, size=good, records=len(records), sealed=True))
        for stale in self.root.glob(".tmp-*"):
            stale.unlink(missing_ok=True)
