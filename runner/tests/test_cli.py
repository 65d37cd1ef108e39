import argparse

import pytest
from helicone_runner.cli import build_parser, parse_targets


def test_targets():
    assert parse_targets("all") == ["prompts", "ingest", "api", "gateway"]
    assert parse_targets("gateway, api") == ["gateway", "api"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown service"):
        parse_targets("gateway,billing")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_targets(",")


def test_up_defaults():
    args = build_parser().parse_args(["up", "--target", "gateway"])
    assert args.target == ["gateway"] and args.analytics == "chdb" and args.bodies == "local" and args.kafka is None


def test_keys_create_prints_a_working_key(fresh_db_dsn, capsys):
    import asyncio
    import json

    from helicone_core import db
    from helicone_runner.cli import run_keys_create

    args = build_parser().parse_args(["keys", "create", "--postgres-dsn", fresh_db_dsn, "--org-name", "acme", "--name", "ci"])
    assert asyncio.run(run_keys_create(args)) == 0
    created = json.loads(capsys.readouterr().out)

    async def resolve():
        pool = await db.connect_pool(fresh_db_dsn, max_size=1)
        try:
            return await db.KeyResolver(pool).resolve(created["key"]), await pool.fetchval("SELECT name FROM orgs")
        finally:
            await pool.close()

    assert asyncio.run(resolve()) == (created["org_id"], "acme")


def test_unknown_target_is_a_clear_error(capsys):
    from helicone_runner.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["up", "--target", "billing"])
    assert exc.value.code == 2 and "unknown service(s) billing" in capsys.readouterr().err
