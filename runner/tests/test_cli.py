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
