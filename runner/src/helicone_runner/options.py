"""Command-line options that can also come from the environment, documented with their variable.

`env_option` reads the default from the variable and says so in --help; a bad value, from the
command line or the environment, is an argparse error (exit 2) naming the option, the variable
when it came from there, and the accepted values.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any


class _FromEnv(str):
    """A default read from the environment: its variable goes into the error message."""

    env: str


def _checked(convert: Callable[[str], Any], option: str) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            return convert(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            where = f"{value.env}={str(value)!r}" if isinstance(value, _FromEnv) else f"{option} {value!r}"
            raise argparse.ArgumentTypeError(f"{where}: {exc}") from None

    return parse


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError("not a port number; accepted: 1-65535") from None
    if not 1 <= number <= 65535:
        raise ValueError("out of range; accepted: 1-65535")
    return number


def positive_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("not a number of seconds; accepted: a number > 0") from None
    if number <= 0:
        raise ValueError("accepted: a number of seconds > 0")
    return number


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"accepted: {', '.join(choices)}")
        return value

    return parse


def text(value: str) -> str:
    return value


def flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("accepted: 1/true/yes/on or 0/false/no/off")


def env_option(parser: argparse.ArgumentParser, option: str, env: str, help: str, *, default: Any = None,
               type: Callable[[str], Any] = text, metavar: str | None = None, **kw: Any) -> None:
    """--option with its default from `env`; the help ends with `[env ENV, default D]`."""
    raw = os.environ.get(env)
    if raw is not None:
        value: Any = _FromEnv(raw)
        value.env = env
    else:
        value = default
    shown = "unset" if default is None else default
    parser.add_argument(option, type=_checked(type, option), default=value, metavar=metavar,
                        help=f"{help} [env {env}, default {shown}]", **kw)


def env_flag(parser: argparse.ArgumentParser, option: str, env: str, help: str) -> None:
    """A switch that the variable can also turn on (1/true/yes/on)."""
    raw = os.environ.get(env)
    try:
        default = flag(raw) if raw is not None else False
    except ValueError as exc:
        parser.error(f"{env}={raw!r}: {exc}")
    parser.add_argument(option, action="store_true", default=default, help=f"{help} [env {env}, default off]")
