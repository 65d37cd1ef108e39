"""The provider key vault: an org's own provider API keys (OpenAI's, Anthropic's, ...) stored in Postgres, so that its
apps hold only a Helicone key and the gateway adds the provider key on the way out (Helicone's Vault, the virtual keys
of Portkey and LiteLLM).

At rest each key is encrypted with AES-256-GCM under the deployment's master key (HELICONE_VAULT_KEY), bound to its org
and provider (a ciphertext copied to another row does not decrypt); retired master keys (HELICONE_VAULT_OLD_KEYS) still
decrypt, so a master key is rotated by adding the new one and moving the old one to the old list. The api encrypts
(helicone_api.provider_keys); each gateway decrypts every key once, at load, and holds them in memory only
(ProviderKeyDirectory: the key directory's LISTEN/NOTIFY pattern, so a deleted key stops being used within the same
bound as a revoked Helicone key). Without a master key nothing is stored and nothing is substituted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import logging
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pydantic import SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from . import db
from .cancellation import wait_for
from .db import PROVIDER_KEY_CHANGES_CHANNEL
from .key_directory import KeyDirectory
from .settings import CommonSettings, describe_settings_error, env_name

log = logging.getLogger(__name__)

KEY_BYTES = 32  # AES-256
MASTER_KEY_FORM = "32 random bytes in base64, e.g. the output of `openssl rand -base64 32`"
MASTER_KEY_TEXT = "[A-Za-z0-9+/_-]{43}=?"  # its text (either base64 alphabet): the chart's schema checks it before a pod does
MAX_PROVIDER_KEY_CHARS = 1024  # the longest provider key stored (they are far shorter); bounds the NOTIFY payload
# A provider key as stored and sent in a header: visible ASCII only (no space, CR or LF: nothing can be injected into the
# upstream request), checked by the api before it stores one and by the gateway before it sends one.
PROVIDER_KEY = re.compile(rf"[\x21-\x7e]{{8,{MAX_PROVIDER_KEY_CHARS}}}")
PROVIDER_KEY_FORM = f"8 to {MAX_PROVIDER_KEY_CHARS} visible ASCII characters, no spaces"
_FORMAT = b"\x01"  # ciphertext layout: format, key id (8), nonce (12), AES-GCM ciphertext and tag
_KEY_ID_BYTES = 8
_NONCE_BYTES = 12
_MIN_CIPHERTEXT = 1 + _KEY_ID_BYTES + _NONCE_BYTES + 16


def parse_master_key(text: str, setting: str) -> bytes:
    """A master key from its base64 text (standard or URL-safe alphabet); ValueError naming `setting` otherwise."""
    raw = text.strip().replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError(f"{env_name(setting)} must be {MASTER_KEY_FORM}")
    return key


def _key_id(key: bytes) -> bytes:
    """Which master key encrypted a value (stored with it): a hash that tells nothing about the key."""
    return hashlib.sha256(b"helicone-vault-key-id\x00" + key).digest()[:_KEY_ID_BYTES]


def _bound_to(org_id: str, provider: str) -> bytes:
    """The AES-GCM associated data: a stored key decrypts only as the key of this org and provider."""
    return f"helicone-provider-key\x00{org_id}\x00{provider}".encode()


class VaultError(Exception):
    """A stored key that cannot be decrypted (never holds the key itself)."""


class Keyring:
    """The master key that encrypts, and every key (old ones too) that decrypts."""

    def __init__(self, current: bytes, old: list[bytes] | tuple[bytes, ...] = ()) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only processes with a vault load it

        self._current_id = _key_id(current)
        self._ciphers = {_key_id(k): AESGCM(k) for k in (*old, current)}

    def __repr__(self) -> str:
        return f"Keyring({len(self._ciphers)} keys)"

    def encrypt(self, org_id: str, provider: str, secret: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self._current_id].encrypt(nonce, secret.encode(), _bound_to(org_id, provider))
        return _FORMAT + self._current_id + nonce + sealed

    def decrypt(self, org_id: str, provider: str, blob: bytes) -> str:
        from cryptography.exceptions import InvalidTag

        if len(blob) < _MIN_CIPHERTEXT or blob[:1] != _FORMAT:
            raise VaultError("not a stored key this version can read")
        key_id = blob[1:1 + _KEY_ID_BYTES]
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise VaultError(f"encrypted with a master key this service does not have (key id {key_id.hex()}): add it to "
                             f"{env_name('vault_old_keys')}")
        nonce, sealed = blob[1 + _KEY_ID_BYTES:1 + _KEY_ID_BYTES + _NONCE_BYTES], blob[1 + _KEY_ID_BYTES + _NONCE_BYTES:]
        try:
            return cipher.decrypt(nonce, sealed, _bound_to(org_id, provider)).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise VaultError("does not decrypt as this org's key for this provider (changed, or copied from another "
                             "row)") from None

    def current(self, blob: bytes) -> bool:
        """Whether `blob` is encrypted with the current master key (else `reencrypt` moves it)."""
        return blob[1:1 + _KEY_ID_BYTES] == self._current_id


_SEPARATORS = re.compile(r"[\s,]+")


class VaultSettings(BaseSettings):
    """The vault's settings, read by the api (encrypts) and the gateway (decrypts); mixed into their settings."""

    model_config = SettingsConfigDict(**CommonSettings.model_config)  # the services' (HELICONE_ prefix, inputs hidden)

    # The vault's master key (MASTER_KEY_FORM); unset: the vault is off (its api routes answer 503, nothing is substituted).
    vault_key: SecretStr | None = None
    # Retired master keys, comma-separated: they still decrypt, never encrypt (rotation: see README "Provider key vault").
    vault_old_keys: SecretStr | None = None

    @field_validator("vault_key", "vault_old_keys", mode="before")
    @classmethod
    def _vault_empty_is_unset(cls, v):  # a name of its own: a settings class it is mixed into may have an _empty_is_unset
        return None if v in ("", None) else v  # an empty variable (e.g. rendered by a chart) means "not set"

    @field_validator("vault_key")
    @classmethod
    def _vault_master_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parse_master_key(v.get_secret_value(), "vault_key")
        return v

    @field_validator("vault_old_keys")
    @classmethod
    def _vault_old_keys(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            for text in _SEPARATORS.split(v.get_secret_value().strip()):
                parse_master_key(text, "vault_old_keys")
        return v

    @model_validator(mode="after")
    def _old_keys_need_a_key(self) -> VaultSettings:
        if self.vault_old_keys is not None and self.vault_key is None:
            raise ValueError(f"{env_name('vault_old_keys')} is set but {env_name('vault_key')} is not: the old keys only "
                             "decrypt, a current key encrypts")
        return self

    def vault_keyring(self) -> Keyring | None:
        """The keyring, or None while the vault is off (no master key)."""
        if self.vault_key is None:
            return None
        old = [] if self.vault_old_keys is None else [
            parse_master_key(t, "vault_old_keys") for t in _SEPARATORS.split(self.vault_old_keys.get_secret_value().strip())]
        return Keyring(parse_master_key(self.vault_key.get_secret_value(), "vault_key"), old)


def vault_off_message() -> str:
    return (f"the provider key vault is off: the operator sets {env_name('vault_key')} ({MASTER_KEY_FORM}) on the api "
            "and the gateway to turn it on")


def key_hint(secret: str) -> str:
    """What the list shows of a stored key: its prefix and its last four characters (`sk-...abcd`), seven characters
    at most, none of a key shorter than 16."""
    secret = secret.strip()
    if len(secret) < 16:
        return "..."
    head = secret[:3] if secret[:3].endswith("-") or secret[:3].isalpha() else ""
    return f"{head}...{secret[-4:]}"


# ---- Postgres (the api's side) ------------------------------------------------------------------------------------

COLUMNS = "id, org_id, provider, name, hint, created_at"


@dataclass(frozen=True)
class ProviderKeyInfo:
    """A stored key as the api lists it: never the key."""

    id: str
    org_id: str
    provider: str
    name: str
    hint: str
    created_at: dt.datetime

    @classmethod
    def from_row(cls, r: Any) -> ProviderKeyInfo:
        return cls(str(r["id"]), str(r["org_id"]), r["provider"], r["name"], r["hint"], r["created_at"])

    def to_json(self) -> dict:
        return {"id": self.id, "org_id": self.org_id, "provider": self.provider, "name": self.name, "hint": self.hint,
                "created_at": self.created_at.isoformat()}


async def store_provider_key(pool: asyncpg.Pool, keyring: Keyring, org_id: str, provider: str, name: str,
                             secret: str) -> tuple[ProviderKeyInfo, bool]:
    """Stores the org's key for `provider`, replacing the one it had (under a new id); (the key, whether it is new)."""
    row = await pool.fetchrow(
        f"INSERT INTO provider_keys(org_id, provider, name, hint, ciphertext) VALUES ($1, $2, $3, $4, $5) "
        f"ON CONFLICT (org_id, provider) DO UPDATE SET id = gen_random_uuid(), name = EXCLUDED.name, hint = EXCLUDED.hint, "
        f"ciphertext = EXCLUDED.ciphertext, created_at = now() RETURNING {COLUMNS}, (xmax = 0) AS inserted",
        uuid.UUID(org_id), provider, name, key_hint(secret), keyring.encrypt(org_id, provider, secret),
    )
    return ProviderKeyInfo.from_row(row), row["inserted"]


async def list_provider_keys(pool: asyncpg.Pool, org_id: str) -> list[ProviderKeyInfo]:
    rows = await pool.fetch(f"SELECT {COLUMNS} FROM provider_keys WHERE org_id = $1 ORDER BY provider", uuid.UUID(org_id))
    return [ProviderKeyInfo.from_row(r) for r in rows]


async def delete_provider_key(pool: asyncpg.Pool, org_id: str, provider: str) -> ProviderKeyInfo | None:
    """Deletes the org's key for `provider`; None when it has none."""
    row = await pool.fetchrow(f"DELETE FROM provider_keys WHERE org_id = $1 AND provider = $2 RETURNING {COLUMNS}",
                              uuid.UUID(org_id), provider)
    return None if row is None else ProviderKeyInfo.from_row(row)


async def reencrypt(pool: asyncpg.Pool, keyring: Keyring) -> int:
    """Encrypts every stored key that an old master key encrypted with the current one (the last step of a rotation,
    after which the old key can be dropped); the number of keys moved. Every gateway learns them as new keys."""
    moved = 0
    for r in await pool.fetch("SELECT id, org_id, provider, ciphertext FROM provider_keys"):
        if keyring.current(r["ciphertext"]):
            continue
        org_id = str(r["org_id"])
        try:
            secret = keyring.decrypt(org_id, r["provider"], r["ciphertext"])
        except VaultError as exc:
            raise VaultError(f"stored {r['provider']} key {r['id']} of org {org_id}: {exc}") from None
        done = await pool.execute("UPDATE provider_keys SET ciphertext = $1 WHERE id = $2 AND ciphertext = $3",
                                  keyring.encrypt(org_id, r["provider"], secret), r["id"], r["ciphertext"])
        moved += done == "UPDATE 1"
    return moved


# ---- the gateway's copy ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StoredKey:
    """An org's key for a provider, as the gateway sends it: `header` is (lower-case name, value), built once at load."""

    id: str  # the row's id: part of the cache key of the answers it got (a new key never gets the old one's answers)
    header: tuple[str, str] = field(repr=False)

    def __repr__(self) -> str:  # a stray log line or traceback never shows the key
        return f"StoredKey({self.id})"


class ProviderKeyDirectory(KeyDirectory):
    """Every org's stored provider keys, decrypted, in memory only: loaded whole from Postgres, kept current by the
    provider_keys trigger's NOTIFY (migration 10) and the periodic reload, as the key directory follows api_keys. No
    snapshot: after a restart without Postgres no stored key is used (the caller's own keys still are). A key that does
    not decrypt (a master key missing) is left out and logged by id, never by value."""

    channel = PROVIDER_KEY_CHANGES_CHANNEL
    down_message = ("provider key vault unreachable (%s); adding the last known stored keys (%d) and following again "
                    "when it answers")
    down_unloaded_message = "provider key vault unreachable (%s) and nothing loaded: no stored key is added until it answers"

    def __init__(self, dsn: str, keyring: Keyring, vault_headers: dict[str, tuple[str, str]], *, entries: Any, live: Any,
                 changes: Any, **options: Any) -> None:
        self.keyring = keyring
        self.vault_headers = vault_headers  # provider -> (header, value prefix) its stored key is sent in
        # changes: by kind, `undecryptable` counting each row left out at each load (a missing master key keeps it rising)
        self.m_entries, self.m_live, self.m_changes = entries, live, changes
        super().__init__(dsn, None, None, **options)  # type: ignore[arg-type]

    def _register_metrics(self, metrics: Any) -> None:
        pass  # given by the service, which registers them whether its vault is on or not

    def key_for(self, org_id: str, provider: str) -> StoredKey | None:
        return self._keys.get((org_id, provider))

    async def _fetch(self, conn: asyncpg.Connection) -> dict:
        rows = await wait_for(conn.fetch("SELECT id, org_id, provider, ciphertext FROM provider_keys"),
                              self.connect_timeout * 5)
        keys: dict = {}
        for r in rows:
            self._load(keys, str(r["org_id"]), r["provider"], str(r["id"]), r["ciphertext"])
        return keys

    def _apply(self, keys: dict, payload: str) -> None:
        org_id, provider, key_id, hexed = (payload.split(":", 3) + ["", "", ""])[:4]
        if not key_id:
            if keys.pop((org_id, provider), None) is not None:
                self.m_changes.labels("removed").inc()
            return
        try:
            blob = bytes.fromhex(hexed)
        except ValueError:
            blob = b""
        if self._load(keys, org_id, provider, key_id, blob):
            self.m_changes.labels("added").inc()

    def _load(self, keys: dict, org_id: str, provider: str, key_id: str, blob: bytes) -> bool:
        """Decrypts one row into `keys` (a row that does not decrypt, or names no provider of the table, takes the
        org's key for that provider out: never an older key in its place); whether it went in."""
        sending = self.vault_headers.get(provider)
        try:
            if sending is None:
                raise VaultError("names no provider of the provider table")
            secret = self.keyring.decrypt(org_id, provider, blob)
            if not PROVIDER_KEY.fullmatch(secret):
                raise VaultError(f"is not a provider key the gateway can send ({PROVIDER_KEY_FORM})")
        except VaultError as exc:
            keys.pop((org_id, provider), None)
            self.m_changes.labels("undecryptable").inc()
            log.warning("stored %s key %s of org %s is not used: %s", provider[:32], key_id[:36], org_id[:36], exc)
            return False
        keys[(org_id, provider)] = StoredKey(key_id, (sending[0], sending[1] + secret))
        return True


# ---- the rotation's last step, from a shell: `python -m helicone_core.vault reencrypt` ---------------------------------

class VaultAdminSettings(CommonSettings, VaultSettings):
    """What `reencrypt` reads: HELICONE_POSTGRES_DSN, HELICONE_VAULT_KEY and HELICONE_VAULT_OLD_KEYS."""


async def _reencrypt(dsn: str, keyring: Keyring) -> int:
    pool = await db.connect_pool(dsn, max_size=1)
    try:
        await db.migrate(pool)
        return await reencrypt(pool, keyring)
    finally:
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helicone_core.vault", description="The provider key vault's master key "
                                     "rotation (see README: Provider key vault).")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("reencrypt", help=f"encrypt with {env_name('vault_key')} every stored provider key an old key "
                   f"({env_name('vault_old_keys')}) encrypted; prints how many")
    parser.parse_args(argv)
    try:
        settings = VaultAdminSettings()
    except ValidationError as exc:
        print(f"error: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    keyring = settings.vault_keyring()
    if keyring is None:
        print(f"error: {env_name('vault_key')} is not set: {vault_off_message()}", file=sys.stderr)
        return 2
    try:
        moved = asyncio.run(_reencrypt(settings.postgres_dsn.get_secret_value(), keyring))
    except VaultError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one clear line, never the DSN
        print(f"error: {exc.__class__.__name__}: cannot reach or update the provider key vault in Postgres", file=sys.stderr)
        return 1
    print(f'{{"reencrypted": {moved}}}')
    return 0


if __name__ == "__main__":
    sys.exit(main())
