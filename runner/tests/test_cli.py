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
    from helicone_runner.cli import run_keys

    def cli(*argv) -> tuple[int, str, str]:
        code = asyncio.run(run_keys(build_parser().parse_args(["keys", *argv, "--postgres-dsn", fresh_db_dsn])))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = cli("create", "--org-name", "acme", "--name", "ci")
    created = json.loads(out)
    assert code == 0 and created["key"].startswith(db.KEY_PREFIX)

    async def active():
        pool = await db.connect_pool(fresh_db_dsn, max_size=1)
        try:
            return (await pool.fetchval("SELECT org_id::text FROM api_keys WHERE key_hash=$1 AND revoked_at IS NULL",
                                        db.hash_key(created["key"])), await pool.fetchval("SELECT name FROM orgs"))
        finally:
            await pool.close()

    assert asyncio.run(active()) == (created["org_id"], "acme")

    code, out, _ = cli("list")
    [listed] = [json.loads(line) for line in out.splitlines()]
    assert listed["id"] == created["id"] and listed["name"] == "ci" and listed["revoked_at"] is None
    assert created["key"] not in out  # only a preview is ever shown

    code, out, _ = cli("revoke", created["id"])
    assert code == 0 and json.loads(out)["revoked_at"] is not None
    assert asyncio.run(active())[0] is None
    code, _, err = cli("revoke", "00000000-0000-0000-0000-000000000000")
    assert code == 1 and "no key with id" in err


def test_unknown_target_is_a_clear_error(capsys):
    from helicone_runner.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["up", "--target", "billing"])
    assert exc.value.code == 2 and "unknown service(s) billing" in capsys.readouterr().err
