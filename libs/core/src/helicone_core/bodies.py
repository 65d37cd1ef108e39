"""Object store for request/response bodies: a local directory (embedded mode; owner-only,
directories 0700 and files 0600) or S3 (explicit keys from the settings, or the default AWS
credential chain: IRSA, instance role, AWS_* variables).

A body is read by its reference, the row's request_body_key / response_body_key: either a whole
object's key (bodies written one object per body: producers' `location` keys, and rows ingest wrote
before body packs) or `<pack key>#<offset>+<length>`, a byte range of a body pack, the one object
per org and batch that ingest writes (see helicone_ingest.writer). Both forms stay readable."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr

from .filemodes import PRIVATE_FILE_MODE, private_dir
from .kafka import MAX_RECORD_BYTES
from .settings import S3_KEY_PAIR_ERROR, CommonSettings

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/]*$")
RANGE_SEP = "#"  # never part of an object key (_KEY)
_RANGE = re.compile(r"^(\d{1,15})\+(\d{1,15})$")
PACK_CONTENT_TYPE = "application/vnd.helicone.body-pack"
# the largest body read for an answer: every body a log event carries fits one Kafka record; a producer's
# `location` object may be any size, and one read whole could take the reader's memory
MAX_BODY_READ_BYTES = MAX_RECORD_BYTES


def _check_key(key: str) -> str:
    if not _KEY.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid body key {key!r}")
    return key


def body_ref(key: str, offset: int, length: int) -> str:
    """The reference of the `length` bytes at `offset` of the object `key` (a body inside a pack)."""
    return body_refs(key, ((offset, length),))[0]


def body_refs(key: str, spans) -> list[str]:
    """body_ref of each (offset, length) of one object, the key checked once (a pack's bodies)."""
    prefix = _check_key(key) + RANGE_SEP
    return [f"{prefix}{offset}+{length}" for offset, length in spans]


def split_ref(ref: str) -> tuple[str, int | None, int | None]:
    """(object key, offset, length) of a body reference; offset and length are None for a whole object."""
    key, sep, span = ref.partition(RANGE_SEP)
    if not sep:
        return _check_key(key), None, None
    m = _RANGE.match(span)
    if m is None:
        raise ValueError(f"invalid body reference {ref!r}: expected <key>{RANGE_SEP}<offset>+<length>")
    return _check_key(key), int(m.group(1)), int(m.group(2))


def store_error(exc: BaseException) -> str:
    """What a failed read of the body store was, for an answer: S3's error code (NoSuchBucket, SlowDown,
    AccessDenied, InvalidAccessKeyId, ...), else the exception's class (a connection or file error)."""
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
    return str(code) if code else exc.__class__.__name__


class BodyCutShort(Exception):
    """A body whose object holds only part of the range its reference names: the object was not written
    whole (a local pack cut by a power loss; the local store does not fsync). Never answered as the part."""

    def __init__(self, present: int, length: int) -> None:
        super().__init__(f"the stored body is cut short: {present} of its {length} bytes are in the body store")
        self.present, self.length = present, length


class BodyTooLarge(Exception):
    """A body larger than MAX_BODY_READ_BYTES: named with its size, never read."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the stored body is {size} bytes, more than the {MAX_BODY_READ_BYTES} an answer holds")
        self.size = size


def _readable(size: int) -> None:
    if size > MAX_BODY_READ_BYTES:
        raise BodyTooLarge(size)


def _whole(data: bytes, length: int) -> bytes:
    if len(data) < length:
        raise BodyCutShort(len(data), length)
    return data


class BodyStore(Protocol):
    async def start(self) -> None: ...
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...
    # a key or a body_ref; None: no such object; raises BodyCutShort for a range the object holds only part of,
    # BodyTooLarge for a body over MAX_BODY_READ_BYTES
    async def get(self, ref: str) -> bytes | None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class LocalBodyStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    async def start(self) -> None:
        await asyncio.to_thread(private_dir, self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if not path.parent.is_dir():
            private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            # atomic (rename) but not fsynced: like chDB's own writes in embedded mode, a body
            # survives a process crash, not a power loss; production stores bodies in S3
            with os.fdopen(fd, "wb") as f:
                os.fchmod(fd, PRIVATE_FILE_MODE)  # mkstemp asks for 0600; an odd umask may take bits away
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await asyncio.to_thread(self._write, key, data)

    async def get(self, ref: str) -> bytes | None:
        key, offset, length = split_ref(ref)
        path = self._path(key)
        try:
            if offset is None:
                return await asyncio.to_thread(_read_object, path)
            _readable(length)
            return _whole(await asyncio.to_thread(_read_range, path, offset, length), length)
        except FileNotFoundError:
            return None

    async def ping(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK)

    async def sweep(self, max_age: float) -> int:
        """Deletes the bodies written more than `max_age` seconds ago (retention, as an S3 lifecycle rule
        does by an object's age); returns how many. A pack only holds the requests of one batch, written
        when they were logged."""
        return await asyncio.to_thread(_sweep, self.root, time.time() - max_age)

    async def close(self) -> None:
        return None


def _sweep(root: Path, cutoff: float) -> int:
    removed, emptied = 0, set()  # emptied: directories this sweep deleted from
    for parent, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(parent, name)
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_mtime < cutoff:
                    os.unlink(path)
                    removed += 1
                    emptied.add(parent)
        for name in dirs:
            path = os.path.join(parent, name)
            # an empty directory nothing was written to for the whole age (a write racing its removal fails,
            # and ingest retries the batch)
            with contextlib.suppress(OSError):
                if path in emptied or os.lstat(path).st_mtime < cutoff:
                    os.rmdir(path)  # only when empty
                    emptied.add(parent)
    return removed


def _read_object(path: Path) -> bytes:
    with open(path, "rb") as f:
        _readable(os.fstat(f.fileno()).st_size)
        return f.read()


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


# tries of one S3 call (the first and its retries), each bounded by the store's timeout
S3_TRIES = 3


class S3BodyStore:
    def __init__(self, bucket: str, endpoint: str | None, region: str, create_bucket: bool,
                 access_key_id: SecretStr | None = None, secret_access_key: SecretStr | None = None,
                 timeout: float = 10.0) -> None:
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError(S3_KEY_PAIR_ERROR)
        self.bucket = bucket
        self.endpoint = endpoint
        self.region = region
        self.create_bucket = create_bucket
        self._access_key_id = access_key_id  # None: the default credential chain
        self._secret_access_key = secret_access_key
        self.timeout = timeout
        self._session = None
        self._client_cm = None
        self._client = None

    async def start(self) -> None:
        import aioboto3
        from aiobotocore.config import AioConfig

        self._session = aioboto3.Session()
        keys = {}
        if self._access_key_id is not None and self._secret_access_key is not None:
            keys = {"aws_access_key_id": self._access_key_id.get_secret_value(),
                    "aws_secret_access_key": self._secret_access_key.get_secret_value()}
        # each try waits at most `timeout` (aiobotocore's default: 60 s to read, 5 tries in its legacy mode)
        config = AioConfig(connect_timeout=self.timeout, read_timeout=self.timeout,
                           retries={"max_attempts": S3_TRIES, "mode": "standard"})
        self._client_cm = self._session.client("s3", endpoint_url=self.endpoint, region_name=self.region, config=config,
                                               **keys)
        self._client = await self._client_cm.__aenter__()
        if self.create_bucket:
            try:
                await self._client.head_bucket(Bucket=self.bucket)
            except Exception:  # noqa: BLE001 - missing bucket
                await self._client.create_bucket(Bucket=self.bucket)

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        await self._client.put_object(
            Bucket=self.bucket, Key=_check_key(key), Body=data, ContentType=content_type or "application/octet-stream"
        )

    async def get(self, ref: str) -> bytes | None:
        key, offset, length = split_ref(ref)
        extra = {}
        if offset is not None:
            if length == 0:
                return b""
            _readable(length)
            extra["Range"] = f"bytes={offset}-{offset + length - 1}"
        try:
            obj = await self._client.get_object(Bucket=self.bucket, Key=key, **extra)
        except self._client.exceptions.NoSuchKey:
            return None
        except self._client.exceptions.ClientError as exc:
            if offset is not None and store_error(exc) == "InvalidRange":  # the object ends before the range starts
                raise BodyCutShort(0, length) from None
            raise
        async with obj["Body"] as stream:
            if offset is None:
                _readable(obj.get("ContentLength", 0))  # leaves the answer unread (its connection is closed)
            data = await stream.read()
        return data if offset is None else _whole(data, length)

    async def expiry_days(self, prefix: str) -> int | None:
        """The fewest days after which the bucket's lifecycle rules expire every object under `prefix` (None: no
        enabled rule does). A rule narrowed to tags or object sizes leaves other objects, so it does not count."""
        try:
            config = await self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except self._client.exceptions.ClientError as exc:
            if store_error(exc) == "NoSuchLifecycleConfiguration":
                return None
            raise
        days = []
        for rule in config.get("Rules", []):
            narrowed = rule.get("Filter", {"Prefix": rule.get("Prefix", "")})
            if "And" in narrowed and set(narrowed["And"]) == {"Prefix"}:
                narrowed = narrowed["And"]
            expires = rule.get("Expiration", {}).get("Days")
            if (rule.get("Status") == "Enabled" and expires and set(narrowed) <= {"Prefix"}
                    and prefix.startswith(narrowed.get("Prefix", ""))):
                days.append(expires)
        return min(days, default=None)

    async def ping(self) -> bool:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return True
        except Exception:  # noqa: BLE001 - readiness probe
            return False

    async def close(self) -> None:
        if self._client_cm is not None:
            await self._client_cm.__aexit__(None, None, None)
            self._client_cm = self._client = None


def make_body_store(settings: CommonSettings) -> BodyStore:
    if settings.body_store == "local":
        return LocalBodyStore(settings.resolved_body_dir())
    return S3BodyStore(settings.s3_bucket, settings.s3_endpoint, settings.s3_region, settings.s3_create_bucket,
                       settings.s3_access_key_id, settings.s3_secret_access_key, settings.s3_timeout)
