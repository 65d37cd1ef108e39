"""Helicone API key administration from a shell: `python -m helicone_core.key_admin create|list|revoke`
against HELICONE_POSTGRES_DSN (how a cluster's first key is made: `kubectl exec deploy/<api> -- ...`).
`helicone-stack keys` runs the same code against the embedded Postgres on one box."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable

from . import db
from .settings import check_postgres_dsn

DSN_ENV = "HELICONE_POSTGRES_DSN"


def add_commands(parser: argparse.ArgumentParser) -> None:
    """The create/list/revoke subcommands (shared with `helicone-stack keys`)."""
    sub = parser.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="create an org and a key (prints the key once)")
    create.add_argument("--org-name", default="default")
    create.add_argument("--org-id", help="add the key to this existing org instead of creating one")
    create.add_argument("--name", default="cli")
    listing = sub.add_parser("list", help="list keys (id, org, name, preview, created, revoked); never the keys themselves")
    listing.add_argument("--org-id", help="only this org's keys")
    revoke = sub.add_parser("revoke", help="revoke a key: every gateway and api refuses it within about a second")
    revoke.add_argument("key_id", help="the key's id from `list` (or the key itself)")


async def run(args: argparse.Namespace, dsn: str, out: Callable[[str], None] = print) -> int:
    org_id = getattr(args, "org_id", None)
    if org_id:
        try:
            org_id = str(uuid.UUID(org_id))
        except ValueError:
            print(f"error: --org-id {org_id!r} is not an org id (a UUID, the org_id that `create` and `list` print)",
                  file=sys.stderr)
            return 2
    pool = await db.connect_pool(dsn, max_size=2)
    try:
        await db.migrate(pool)
        if args.keys_command == "create":
            if org_id and not await pool.fetchval("SELECT 1 FROM orgs WHERE id = $1", uuid.UUID(org_id)):
                print(f"error: no org with id {org_id!r} (see the org_id in `list`)", file=sys.stderr)
                return 1
            org = org_id or await db.create_org(pool, args.org_name)
            created = await db.create_key(pool, org, args.name)
            out(json.dumps({"org_id": created.org_id, "key": created.key, "id": created.id}))
        elif args.keys_command == "list":
            for key in await db.list_keys(pool, org_id):
                out(json.dumps(key.to_json()))
        else:
            revoked = await db.revoke_key(pool, args.key_id)
            if revoked is None:
                print(f"error: no key with id {args.key_id!r} (see `list`)", file=sys.stderr)
                return 1
            out(json.dumps(revoked.to_json()))
    finally:
        await pool.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helicone_core.key_admin", description=__doc__.splitlines()[0])
    add_commands(parser)
    args = parser.parse_args(argv)
    dsn = os.environ.get(DSN_ENV)
    if not dsn:
        print(f"error: {DSN_ENV} is not set (the Postgres URI the services use)", file=sys.stderr)
        return 2
    try:
        check_postgres_dsn(dsn)  # before asyncpg, which would take part of a misread password for the host
    except ValueError as exc:
        print(f"error: {DSN_ENV}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run(args, dsn))
    except Exception as exc:  # noqa: BLE001 - one clear line, never the DSN
        print(f"error: {exc.__class__.__name__}: cannot reach or update the key store", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
