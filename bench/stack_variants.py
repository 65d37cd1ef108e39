"""Settings of the stack compared on the whole chain, in interleaved rounds: rivals.py's sustained window.

Each variant is a whole stack of ours (`helicone-stack up`, its own Postgres and broker) with extra
environment, behind a lone gateway (`python -m helicone_gateway`, as the chart runs it), all on the same
mock provider (bench/mock_provider.py, 1 ms before each answer). A round drives REQUESTS at concurrency
32 through each variant's gateway in turn (each goes first in turn, every process idle before), and
times, like bench/rivals.py: the load, then until the api's count of them reaches the number answered
(the drain); sustained = requests / (load + drain). It prints each process group's CPU per request
over that time, which the machine's speed moves less than the rates.

    .venv/bin/python bench/stack_variants.py --variant base: --variant gap05:HELICONE_BATCH_GAP=0.5 \
        [--rounds 6] [--requests 3000] [--out FILE]

A variant is LABEL:NAME=VALUE,NAME=VALUE (the environment of its stack and of its gateway). Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import rivals  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.stack import running_stack  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """'LABEL:NAME=VALUE,NAME=VALUE' -> (label, environment)."""
    label, _, assignments = text.partition(":")
    if not label:
        raise argparse.ArgumentTypeError(f"a variant needs a label: {text!r}")
    env = {}
    for item in filter(None, assignments.split(",")):
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise argparse.ArgumentTypeError(f"not NAME=VALUE: {item!r} in {text!r}")
        env[name] = value
    return label, env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", type=parse_variant, default=[], help="LABEL:NAME=VALUE,... (repeat)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=3000, help="requests per window")
    p.add_argument("--client", choices=rivals.CLIENTS, default="raw", help="the load client (see bench/rivals.py)")
    p.add_argument("--out", type=Path, help="also write the output to this file")
    args = p.parse_args()
    variants = args.variant or [("this", {})]
    if len({label for label, _ in variants}) != len(variants):
        p.error("variant labels must differ")
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - open for the whole run

    def say(line: str) -> None:
        print(line, flush=True)
        if out:
            out.write(line + "\n")
            out.flush()

    say(f"stack variants {' '.join(f'{label}:{env}' for label, env in variants)}; {args.rounds} rounds of {args.requests} "
        f"requests at c=32 ({args.client} client) on {rivals.machine()}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="stack-variants-") as tmp_name:
        run(Path(tmp_name), variants, args.rounds, args.requests, say, args.client)
    if out:
        out.close()


def run(tmp: Path, variants: list[tuple[str, dict[str, str]]], rounds: int, requests: int, say, client: str = "raw") -> None:
    from helicone_runner.embedded import EmbeddedPostgres

    mock_port = free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    with contextlib.ExitStack() as stack_exit:
        mock = rivals.start_mock(stack_exit, mock_port, 1.0, tmp / "mock.log")
        systems = []  # (System, stack, gateway process)
        for label, env in variants:
            home = tmp / label
            home.mkdir()
            pg = EmbeddedPostgres(home / "pg")
            dsn = pg.start()
            stack_exit.callback(pg.stop)
            stack = stack_exit.enter_context(running_stack(
                home, s3=False, postgres_dsn=dsn, upstream_url=mock_url, extra_env={**rivals.product_defaults(), **env}))
            gw_port = free_port()
            gateway = rivals.start_lone_gateway(stack_exit, stack, dsn, mock_url, gw_port, home / "gw", home / "gw.log")
            system = rivals.System(label, label, f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                                   {"Helicone-Auth": f"Bearer {stack.key}", "Authorization": "Bearer sk-bench"},
                                   lambda gateway=gateway: [gateway.pid], (stack.api, stack.key))
            systems.append((system, stack, gateway))
            say(f"{label}: stack ready in {stack.startup_seconds:.1f}s")

        def parts(stack, gateway) -> dict[str, list[int]]:
            return {"gateway": [gateway.pid], "stack": [stack.runner_pid()],
                    "broker": [stack.kafka.pid] if stack.kafka and stack.kafka.pid else [], "mock": [mock.pid], "client": []}

        def every_root() -> list[int]:
            return [pid for _, stack, gateway in systems for group in parts(stack, gateway).values() for pid in group if pid]

        for system, _, _ in systems:  # warm up connections, key caches
            rivals.drive(system.url, {**system.headers, rivals.RUN_HEADER: "warm-up"}, rivals.BODY, 300, 8, client)
        stamp = secrets.token_hex(3)
        results: dict[str, list[tuple[float, ...]]] = {s.name: [] for s, _, _ in systems}
        for rnd in range(rounds):
            for system, stack, gateway in systems[rnd % len(systems):] + systems[:rnd % len(systems)]:
                waited, cores = rivals.wait_idle(every_root, below=0.05)
                run_id = f"variants-{stamp}-{system.name}-{rnd}"
                before = rivals.ticks_by_part(rivals.proc_table(), parts(stack, gateway), os.getpid())
                w = rivals.drive(system.url, {**system.headers, rivals.RUN_HEADER: run_id}, rivals.BODY, requests, 32, client)
                after: list[dict[str, int]] = []

                def counted(stack=stack, gateway=gateway, after=after) -> None:
                    after.append(rivals.ticks_by_part(rivals.proc_table(), parts(stack, gateway), os.getpid()))

                seen, w.drain = rivals.visible(system, run_id, len(w.latencies), timeout=180, counted=counted)
                per_request = rivals.cpu_us_per_request(before, after[-1], len(w.latencies))
                results[system.name].append((w.sent / w.seconds, w.drain, w.rate, per_request["gateway"], per_request["stack"]))
                say(f"round {rnd + 1} {system.name}: load {w.sent / w.seconds:.0f} rps, errors {w.errors}, {seen}/{len(w.latencies)} "
                    f"visible {w.drain:.3f}s after the load, sustained {w.rate:.0f} rps; CPU per request until counted: "
                    f"{rivals.cpu_per_request(before, after[-1], len(w.latencies))} (waited {waited:.1f}s for idle, {cores:.3f} cores)")
                if seen < len(w.latencies) or w.errors:
                    raise SystemExit(f"{system.name}: {w.errors} errors, {seen} of {len(w.latencies)} answered requests in the api")
        say(f"\n{'variant':12s} {'load rps':>9s} {'drain s':>8s} {'sustained rps':>14s} {'best':>6s} {'gateway µs':>11s} "
            f"{'stack µs':>9s}   (medians of {rounds} rounds; µs: CPU per request until the api counted them)")
        for name, rows in results.items():
            med = [statistics.median(r[i] for r in rows) for i in range(5)]
            say(f"{name:12s} {med[0]:9.0f} {med[1]:8.3f} {med[2]:14.0f} {max(r[2] for r in rows):6.0f} {med[3]:11.0f} {med[4]:9.0f}")

if __name__ == "__main__":
    main()
