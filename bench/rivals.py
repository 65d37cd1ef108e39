"""Comparison benchmark: our gateway against Portkey and LiteLLM, on one neutral mock provider.

Systems, all on loopback and all calling the same mock provider (bench/mock_provider.py):
  direct      the mock provider itself (the baseline every overhead is measured against)
  relay       bench/relay.py: a byte relay in front of the mock (no HTTP parsing, no auth, no logging), the
              floor of what any proxy adds here (one more process hop); each gateway's overhead is also
              printed over it
  ours-all    `helicone-stack up` with every service in one process (gateway, ingest, api, prompts)
  ours-gw     the gateway alone (`python -m helicone_gateway`, what the chart runs), logging to the same
              broker, Postgres, ingest and api as ours-all
  ours-gw-noingest
              a second such gateway whose events go to a topic no ingest reads: logging as on (journal,
              Kafka, acks), but no ingest work on the same cores. On two cores ours-gw's c=1 p99 shares
              them with ingest's inserts; this row shows the gateway without that (a cluster runs
              ingest on other nodes). Its sustained rate is its load time alone, like the rivals'. No
              consumer commits on its topic, so its journal is never trimmed: about 1.3 KB a request, far
              below the 256 MB default in a run (27,000 requests: 34 MB)
  portkey     Portkey's open-source gateway (npm @portkey-ai/gateway, Node)
  litellm     LiteLLM's proxy (PyPI litellm[proxy], one worker, master key, no database)

Portkey and LiteLLM are installed the first time into .bench/ (gitignored), never into the project
venv. Every metric window runs each system in turn (interleaved, `--rounds` times), and before each
window the bench waits until every process it started is idle (their CPU from /proc), so one
system's leftover work (our ingest writing logs, a garbage collection) never lands on the next.

Metrics: c=1 p50/p99 overhead over direct; c=32 burst requests/s and p99; sustained requests/s =
requests / (load time + time until the last one is visible in our api; the rivals log nothing, so
their sustained rate is their load time alone); streaming first byte (c=1, over direct) and
requests/s (c=32); resident memory of each system's processes; the gateway's journal/spool
counters; and, for ours, that every request answered is visible in the api.

    .venv/bin/python bench/rivals.py [--rounds 2] [--burst-requests 2000] [--out bench/results/rivals-DATE.txt]

Traffic only ever goes to 127.0.0.1. Portkey's server has no listen-address option and binds every
interface; LiteLLM runs with LITELLM_LOCAL_MODEL_COST_MAP so it does not fetch its price list.
The client shares the machine's cores with every server: compare systems within one run, not
absolute numbers between machines. It is bench/raw_http.py's raw HTTP/1.1 client by default (about a
third of aiohttp's CPU per request); `--client aiohttp` or `--client raw,aiohttp` (both, interleaved).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiohttp
import httpx
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import raw_http  # noqa: E402
from tests.support.load import logged_ids  # noqa: E402
from tests.support.net import free_port, poll_client  # noqa: E402
from tests.support.stack import running_stack  # noqa: E402

BENCH_DIR = ROOT / ".bench"  # rivals' installs, gitignored, kept between runs
PORTKEY_VERSION = "1.15.2"
# Portkey-AI/gateway#1389: with a newer @hono/node-server the gateway hands the provider's (immutable)
# fetch response to its header code and every stream answers 500 "Something went wrong"
PORTKEY_NODE_SERVER = "1.13.8"
LITELLM_VERSION = "1.108.7"

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark prompt with a few words"}]}
STREAM_BODY = dict(BODY, stream=True, stream_options={"include_usage": True})
RUN_HEADER = "Helicone-Property-Fault-Run"  # the property tests.support.load.logged_ids filters on
CLK_TCK = os.sysconf("SC_CLK_TCK")
SPOOL_METRICS = ("helicone_gateway_events_spooled_total", "helicone_gateway_journal_")


# ---- pure helpers (unit-tested in tests/benchmarks/test_rivals.py) ------------------------------------
def parse_stat(text: str) -> tuple[int, int]:
    """(parent pid, user + system CPU ticks) from a /proc/<pid>/stat line; the command name in
    parentheses may itself hold spaces and parentheses, so fields are counted from the last ')'."""
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def descendants(parents: dict[int, int], roots: Iterable[int]) -> set[int]:
    """The roots that exist and every process below them, from a pid -> parent pid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = [r for r in roots if r in parents]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += children.get(pid, [])
    return out


def machine_busy_ticks(proc_stat: str) -> int:
    """CPU ticks every core spent busy (user, nice, system, irq, softirq, steal) from /proc/stat."""
    fields = [int(v) for v in proc_stat.splitlines()[0].split()[1:]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields))


def busy_cores(before: dict[int, int], after: dict[int, int], seconds: float, hz: int = CLK_TCK) -> float:
    """Cores' worth of CPU the processes used between two tick samples (a process that appeared in
    between counts from zero, one that ended counts nothing)."""
    ticks = sum(max(0, t - before.get(pid, 0)) for pid, t in after.items())
    return ticks / hz / seconds if seconds > 0 else 0.0


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (q in 0..1) of unsorted values; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(round(q * len(ordered), 9)))) - 1]


def spooled_cell(text: str) -> str:
    """The table's events-spooled cell from a gateway's /metrics: the counter's sum over its reasons, 0
    when it is declared but has no reason yet, n/a¹ when the build has no such counter."""
    spool = metric_series(text, SPOOL_METRICS[:1])
    if spool:
        return f"{sum(spool.values()):.0f}"
    return "0" if f"# TYPE {SPOOL_METRICS[0]} counter" in text.splitlines() else "n/a¹"


def metric_series(text: str, prefixes: Iterable[str]) -> dict[str, float]:
    """Prometheus text lines whose metric name starts with one of the prefixes, as series -> value."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and any(line.startswith(p) for p in prefixes):
            series, _, value = line.rpartition(" ")
            if not series.split("{", 1)[0].endswith("_created"):  # the client library's creation timestamps
                out[series] = float(value)
    return out


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub table: the first column (names) left-aligned, the numbers right-aligned."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row needs {len(header)} cells, one per column of {header}")
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# ---- processes --------------------------------------------------------------------------------
def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU ticks) of every process now."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(entry.name)] = parse_stat(Path(entry.path, "stat").read_text())
    return out


def machine_ticks() -> int:
    return machine_busy_ticks(Path("/proc/stat").read_text())


def ticks_by_part(table: dict[int, tuple[int, int]], parts: dict[str, list[int]], me: int) -> dict[str, int]:
    """CPU ticks of each named group of process trees, from a proc_table(). A process below the
    roots of two parts (a broker the stack's runner started) counts once, in the smaller part;
    the part "client" is `me` alone, not what it started."""
    parents = {pid: ppid for pid, (ppid, _) in table.items()}
    trees = {name: descendants(parents, roots) for name, roots in parts.items() if name != "client"}
    claimed: set[int] = set()
    out: dict[str, int] = {}
    for name in sorted(trees, key=lambda n: len(trees[n])):
        pids = trees[name] - claimed
        claimed |= pids
        out[name] = sum(table[pid][1] for pid in pids)
    if "client" in parts:
        out["client"] = table.get(me, (0, 0))[1]
    return {name: out[name] for name in parts}


def cpu_us_per_request(before: dict[str, int], after: dict[str, int], requests: int, hz: int = CLK_TCK) -> dict[str, float]:
    """Each part's CPU over a window, in µs per request answered in it."""
    return {name: (after[name] - before.get(name, 0)) / hz / max(requests, 1) * 1e6 for name in after}


def cpu_per_request(before: dict[str, int], after: dict[str, int], requests: int, hz: int = CLK_TCK) -> str:
    """'name N µs, ...': cpu_us_per_request as the bench prints it."""
    return ", ".join(f"{name} {us:.0f} µs" for name, us in cpu_us_per_request(before, after, requests, hz).items())


def tree_ticks(roots: Iterable[int], table: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """CPU ticks of every process in the trees under `roots` (from `table`, a proc_table(), or one read now)."""
    table = proc_table() if table is None else table
    pids = descendants({pid: ppid for pid, (ppid, _) in table.items()}, roots)
    return {pid: table[pid][1] for pid in pids}


def wait_idle(roots: Callable[[], list[int]], *, below: float, sample: float = 0.5, settle: int = 2,
              timeout: float = 60.0) -> tuple[float, float]:
    """Waits until the process trees under `roots` use less than `below` cores for `settle` samples
    in a row; returns (seconds waited, cores in the last sample). Gives up after `timeout`."""
    started, quiet, cores = time.monotonic(), 0, 0.0
    while quiet < settle and time.monotonic() - started < timeout:
        before, t0 = tree_ticks(roots()), time.monotonic()
        time.sleep(sample)
        cores = busy_cores(before, tree_ticks(roots()), time.monotonic() - t0)
        quiet = quiet + 1 if cores < below else 0
    return time.monotonic() - started, cores


def rss_kb(pids: Iterable[int], field_name: str = "VmRSS") -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
    return total


def wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer {url} within {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def wait_gateway(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    """Until the gateway is ready and connected to the broker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if (httpx.get(url + "/readyz", timeout=1).status_code == 200
                    and "helicone_gateway_kafka_connected 1.0" in httpx.get(url + "/metrics", timeout=1).text):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the gateway was not ready within {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def spawned(cmd: list[str], log: Path, **kw) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, **kw)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ---- rivals' installs -------------------------------------------------------------------------
def start_mock(stack_exit: contextlib.ExitStack, port: int, latency_ms: float, log: Path) -> subprocess.Popen:
    """bench/mock_provider.py on `port`, answering after `latency_ms`, stopped with `stack_exit`."""
    mock = stack_exit.enter_context(spawned(
        [sys.executable, str(ROOT / "bench/mock_provider.py"), "--port", str(port), "--latency-ms", str(latency_ms)], log))
    wait_http(f"http://127.0.0.1:{port}/v1/models", mock, 30, "mock provider", log)
    return mock


def start_lone_gateway(stack_exit: contextlib.ExitStack, stack, dsn: str, upstream_url: str, port: int, data_dir: Path,
                       log: Path, topic: str = "") -> subprocess.Popen:
    """The gateway as the chart and the image run it (python -m helicone_gateway) on `port`, on the
    stack's broker and Postgres (`dsn`) and provider settings, every provider at `upstream_url`, its
    events to `topic` (the stack's, which its ingest reads, by default); stopped with `stack_exit`.
    Returns once it is ready and connected to the broker."""
    env = {**stack.env, "HELICONE_PORT": str(port), "HELICONE_DATA_DIR": str(data_dir), "HELICONE_POSTGRES_DSN": dsn,
           "HELICONE_KAFKA_BOOTSTRAP": stack.kafka_bootstrap, "HELICONE_OPENAI_URL": upstream_url,
           "HELICONE_ANTHROPIC_URL": upstream_url, **({"HELICONE_KAFKA_TOPIC": topic} if topic else {})}
    gateway = stack_exit.enter_context(spawned([sys.executable, "-m", "helicone_gateway"], log, cwd=ROOT, env=env))
    wait_gateway(f"http://127.0.0.1:{port}", gateway, 60, log)
    return gateway


def ensure_portkey(say: Callable[[str], None]) -> tuple[Path, str]:
    """Portkey's gateway under .bench/portkey (npm, pinned); returns (start-server.js, version)."""
    home = BENCH_DIR / "portkey"
    manifest = {"private": True, "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
                "overrides": {"@hono/node-server": PORTKEY_NODE_SERVER}}
    installed = home / "node_modules/@portkey-ai/gateway/package.json"
    home.mkdir(parents=True, exist_ok=True)
    current = (home / "package.json").read_text() if (home / "package.json").exists() else ""
    if not installed.exists() or json.loads(current or "{}") != manifest:
        say(f"installing @portkey-ai/gateway {PORTKEY_VERSION} into {home} (npm, first run only)")
        (home / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=home, check=True)
    version = json.loads(installed.read_text())["version"]
    return home / "node_modules/@portkey-ai/gateway/build/start-server.js", version


def ensure_litellm(say: Callable[[str], None]) -> tuple[Path, str]:
    """LiteLLM's proxy in its own venv under .bench/litellm (pinned); returns (litellm CLI, version)."""
    venv = BENCH_DIR / "litellm"
    python = venv / "bin/python"

    def version() -> str:
        r = subprocess.run([str(python), "-c", "from importlib.metadata import version; print(version('litellm'))"],
                           capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if version() != LITELLM_VERSION:
        say(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} (pip, first run only)")
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    return venv / "bin/litellm", version()


# ---- load -------------------------------------------------------------------------------------
@dataclass
class Window:
    latencies: list[float] = field(default_factory=list)  # seconds, whole response
    first_bytes: list[float] = field(default_factory=list)  # seconds to the first body bytes
    seconds: float = 0.0  # load time
    drain: float = 0.0  # after the load, until the last request was visible in the api
    errors: int = 0
    sent: int = 0
    best_rate: float = 0.0  # of the rounds pooled by add()

    @property
    def rate(self) -> float:
        """Requests a second, counting the wait until the api showed them all (when there was one)."""
        return self.sent / (self.seconds + self.drain) if self.seconds else 0.0

    def add(self, other: Window) -> None:
        """Pools another round's requests; the rate kept is the best round's, since the other work
        on a shared machine only ever slows a round down."""
        self.best_rate = max(self.best_rate, other.rate)
        self.latencies += other.latencies
        self.first_bytes += other.first_bytes
        self.seconds += other.seconds
        self.drain += other.drain
        self.errors += other.errors
        self.sent += other.sent


CLIENTS = ("raw", "aiohttp")


def client_list(text: str) -> list[str]:
    clients = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in clients if c not in CLIENTS]
    if unknown or not clients or len(set(clients)) != len(clients):
        raise argparse.ArgumentTypeError(f"a comma list of distinct clients out of {', '.join(CLIENTS)}, not {text!r}")
    return clients


def drive(url: str, headers: dict, body: dict, total: int, concurrency: int, client: str = "raw") -> Window:
    """`total` POSTs of `body` from `concurrency` kept-alive connections, each response read to its end,
    with the raw client (bench/raw_http.py, on uvloop) or aiohttp's (on asyncio's loop)."""
    if client == "aiohttp":
        return asyncio.run(drive_aiohttp(url, headers, body, total, concurrency))
    if client != "raw":
        raise ValueError(f"unknown client {client!r}: one of {', '.join(CLIENTS)}")
    o = uvloop.run(raw_http.drive(url, headers, json.dumps(body).encode(), total, concurrency))
    return Window(latencies=o.latencies, first_bytes=o.first_bytes, seconds=o.seconds, errors=o.errors, sent=total)


async def drive_aiohttp(url: str, headers: dict, body: dict, total: int, concurrency: int) -> Window:
    """`total` POSTs from `concurrency` workers on kept-alive connections, each read to the end."""
    out = Window(sent=total)
    todo = iter(range(total))
    payload = json.dumps(body).encode()
    headers = {**headers, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def worker() -> None:
            for _ in todo:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=payload, headers=headers) as r:
                        await r.content.readany()
                        first = time.perf_counter() - t0
                        async for _chunk in r.content.iter_any():
                            pass
                        ok = r.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                if ok:
                    out.first_bytes.append(first)
                    out.latencies.append(time.perf_counter() - t0)
                else:
                    out.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        out.seconds = time.perf_counter() - started
    return out


# ---- systems ----------------------------------------------------------------------------------
@dataclass
class System:
    name: str
    label: str  # the README row
    url: str  # chat completions
    headers: dict
    pids: Callable[[], list[int]]  # the processes whose memory counts as this system's
    logged_to: tuple[str, str] | None = None  # (api, key) where ours shows every request
    metrics_url: str | None = None
    runs: dict[str, int] = field(default_factory=dict)  # run id -> requests answered 200


WINDOWS = [  # name, body, concurrency, request-count option
    ("c1", BODY, 1, "c1_requests"),
    ("burst", BODY, 32, "burst_requests"),
    ("sustained", BODY, 32, "sustained_requests"),
    ("stream-c1", STREAM_BODY, 1, "c1_requests"),
    ("stream-c32", STREAM_BODY, 32, "burst_requests"),
]


def product_defaults() -> dict[str, str]:
    """Environment for the stack under test: the settings the test stack shortens for quick tests
    (tests/support/stack.py) back at what the product ships with, and quiet logs."""
    from helicone_gateway.settings import GatewaySettings
    from helicone_ingest.settings import IngestSettings

    env = {"HELICONE_LOG_LEVEL": "WARNING"}
    for settings, name in ((IngestSettings, "batch_within"), (IngestSettings, "offset_guard_interval"),
                           (GatewaySettings, "journal_check_interval")):
        env[f"HELICONE_{name.upper()}"] = str(settings.model_fields[name].default)
    return env


def logged_count(api: str, key: str, run: str) -> int:
    """Requests of `run` the api counts (one aggregate query: cheap enough to poll often, where
    paging through thousands of rows would take longer than what it measures)."""
    r = poll_client().post(f"{api}/v1/metrics/breakdown", headers={"Authorization": f"Bearer {key}"},
                           json={"filter": {"properties": {"fault-run": run}}, "by": "provider"})
    r.raise_for_status()
    return sum(row["requests"] for row in r.json()["data"])


def visible(system: System, run: str, expected: int, timeout: float,
            counted: Callable[[], None] | None = None) -> tuple[int, float]:
    """Polls our api until `expected` distinct requests of `run` are visible; (count, seconds). The
    time is taken when the api's count first reaches `expected` (then `counted()` is called), then
    the distinct ids are checked (a count could include a request logged twice); if some are
    missing, polling goes on by ids."""
    api, key = system.logged_to
    started = time.monotonic()
    while logged_count(api, key, run) < expected and time.monotonic() - started <= timeout:
        time.sleep(0.02)
    seen = time.monotonic() - started
    if counted is not None:
        counted()
    count = len(set(logged_ids(api, key, run)))
    while count < expected and time.monotonic() - started <= timeout:
        time.sleep(0.1)
        count = len(set(logged_ids(api, key, run)))
        seen = time.monotonic() - started
    return count, seen


def fmt_ms(seconds: float, signed: bool = False) -> str:
    ms = seconds * 1000
    return f"{ms:+.2f}" if signed else f"{ms:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description="ours vs Portkey vs LiteLLM on one mock provider")
    p.add_argument("--rounds", type=int, default=2, help="times every window runs per system, interleaved")
    p.add_argument("--c1-requests", type=int, default=300)
    p.add_argument("--burst-requests", type=int, default=2000)
    p.add_argument("--sustained-requests", type=int, default=3000)
    p.add_argument("--idle-cores", type=float, default=0.05, help="the started processes count as idle below this")
    p.add_argument("--latency-ms", type=float, default=1.0, help="the mock provider's delay before every answer")
    p.add_argument("--only", default="", help="comma list of the systems to measure (direct always; every system is still started): "
                   "relay,ours-all,ours-gw,ours-gw-noingest,portkey,litellm")
    p.add_argument("--client", type=client_list, default=["raw"],
                   help="the load client: raw HTTP/1.1 on uvloop (bench/raw_http.py), or aiohttp's (the bench's before "
                        "2026-12-06); 'raw,aiohttp' runs every window with each, interleaved, and prints a table per client")
    p.add_argument("--out", type=Path, default=ROOT / f"bench/results/rivals-{dt.date.today().isoformat()}.txt")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    raw = open(args.out, "w")

    def say(line: str) -> None:
        print(line, flush=True)
        raw.write(line + "\n")
        raw.flush()

    with tempfile.TemporaryDirectory(prefix="rivals-") as tmp_name:
        run(args, Path(tmp_name), say)
    raw.close()
    print(f"raw output: {args.out}")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}"


def run(args, tmp: Path, say: Callable[[str], None]) -> None:
    from helicone_runner.embedded import EmbeddedPostgres

    only = set(filter(None, args.only.split(",")))
    say(f"rivals benchmark {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {machine()}; "
        f"load average {os.getloadavg()[0]:.2f} (the machine's other work)")
    pk_js, pk_version = ensure_portkey(say)
    ll_cli, ll_version = ensure_litellm(say)
    say(f"Portkey gateway {pk_version} (node {subprocess.run(['node', '--version'], capture_output=True, text=True).stdout.strip()},"
        f" @hono/node-server {PORTKEY_NODE_SERVER}), LiteLLM {ll_version} (1 worker)")

    mock_port = free_port()
    mock_url = f"http://127.0.0.1:{mock_port}"
    pg = EmbeddedPostgres(tmp / "pg")
    dsn = pg.start()
    with contextlib.ExitStack() as stack_exit:
        stack_exit.callback(pg.stop)
        mock = start_mock(stack_exit, mock_port, args.latency_ms, tmp / "mock.log")
        stack = stack_exit.enter_context(running_stack(
            tmp / "ours", s3=False, postgres_dsn=dsn, upstream_url=mock_url, extra_env=product_defaults()))
        say(f"ours (all services in one process) ready in {stack.startup_seconds:.1f}s")

        gw_port = free_port()
        started = time.monotonic()
        gateway = start_lone_gateway(stack_exit, stack, dsn, mock_url, gw_port, tmp / "gw-alone", tmp / "gw.log")
        say(f"ours (gateway alone) ready in {time.monotonic() - started:.1f}s")
        solo_port = free_port()
        solo = start_lone_gateway(stack_exit, stack, dsn, mock_url, solo_port, tmp / "gw-noingest", tmp / "gw-noingest.log",
                                  topic=f"bench.noingest.{secrets.token_hex(4)}.v1")

        pk_port = free_port()
        portkey = stack_exit.enter_context(spawned(["node", str(pk_js), f"--port={pk_port}", "--headless"],
                                                   tmp / "portkey.log", cwd=pk_js.parent))
        wait_http(f"http://127.0.0.1:{pk_port}/", portkey, 60, "Portkey", tmp / "portkey.log")

        ll_port, master = free_port(), "sk-bench-" + secrets.token_hex(16)
        (tmp / "litellm.yaml").write_text(json.dumps({"model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {
            "model": "openai/gpt-4o-mini", "api_base": mock_url + "/v1", "api_key": "sk-bench"}}]}))
        ll_env = {**os.environ, "LITELLM_MASTER_KEY": master, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
        litellm = stack_exit.enter_context(spawned(
            [str(ll_cli), "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1", "--port", str(ll_port), "--num_workers", "1"],
            tmp / "litellm.log", cwd=tmp, env=ll_env))
        wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", litellm, 180, "LiteLLM", tmp / "litellm.log")

        relay_port = free_port()
        relay = stack_exit.enter_context(spawned(
            [sys.executable, str(ROOT / "bench/relay.py"), "--port", str(relay_port), "--upstream-port", str(mock_port)],
            tmp / "relay.log"))
        wait_http(f"http://127.0.0.1:{relay_port}/v1/models", relay, 30, "byte relay", tmp / "relay.log")

        ours_headers = {"Helicone-Auth": f"Bearer {stack.key}", "Authorization": "Bearer sk-bench"}
        systems = [
            System("direct", "direct (mock provider)", f"{mock_url}/v1/chat/completions",
                   {"Authorization": "Bearer sk-bench"}, lambda: [mock.pid]),
            System("relay", "byte relay (floor: one more hop)", f"http://127.0.0.1:{relay_port}/v1/chat/completions",
                   {"Authorization": "Bearer sk-bench"}, lambda: [relay.pid]),
            System("ours-all", "ours, all services in one process", f"{stack.gateway}/v1/chat/completions", ours_headers,
                   lambda: [stack.runner_pid()], (stack.api, stack.key), stack.gateway),
            System("ours-gw", "ours, gateway alone", f"http://127.0.0.1:{gw_port}/v1/chat/completions", ours_headers,
                   lambda: [gateway.pid], (stack.api, stack.key), f"http://127.0.0.1:{gw_port}"),
            System("ours-gw-noingest", "ours, gateway alone, no ingest on the cores (events to an unread topic)",
                   f"http://127.0.0.1:{solo_port}/v1/chat/completions", ours_headers, lambda: [solo.pid],
                   metrics_url=f"http://127.0.0.1:{solo_port}"),
            System("portkey", f"Portkey {pk_version}", f"http://127.0.0.1:{pk_port}/v1/chat/completions",
                   {"x-portkey-provider": "openai", "x-portkey-custom-host": f"{mock_url}/v1", "Authorization": "Bearer sk-bench"},
                   lambda: [portkey.pid]),
            System("litellm", f"LiteLLM {ll_version}, 1 worker", f"http://127.0.0.1:{ll_port}/v1/chat/completions",
                   {"Authorization": f"Bearer {master}"}, lambda: [litellm.pid]),
        ]
        systems = [s for s in systems if not only or s.name in only or s.name == "direct"]

        def parts() -> dict[str, list[int]]:
            """Every process the bench started, by group (the sustained window prints each one's CPU per request)."""
            return {"gateway alone": [gateway.pid], "gateway, no ingest": [solo.pid], "all-in-one": [stack.runner_pid()],
                    "broker": [stack.kafka.pid] if stack.kafka and stack.kafka.pid else [],
                    "postgres": [pg.postmaster_pid() or 0], "mock": [mock.pid], "relay": [relay.pid], "portkey": [portkey.pid],
                    "litellm": [litellm.pid], "client": []}

        def every_root() -> list[int]:
            return [pid for roots in parts().values() for pid in roots if pid]

        def snapshot_parts(into: list[dict[str, int]]) -> None:
            into.append(ticks_by_part(proc_table(), parts(), os.getpid()))

        for s, client, body in ((s, c, b) for s in systems for c in args.client for b in (BODY, STREAM_BODY)):  # warm up
            w = drive(s.url, {**s.headers, RUN_HEADER: "rivals-warmup"}, body, 50, 4, client)
            if w.errors:
                raise RuntimeError(f"{s.name} failed {w.errors} of 50 warm-up requests ({'stream' if body is STREAM_BODY else 'json'}, "
                                   f"{client} client)")
        waited, cores = wait_idle(every_root, below=args.idle_cores, timeout=120)
        say(f"after warm-up: idle after {waited:.1f}s ({cores:.3f} cores); idle threshold {args.idle_cores} cores; "
            f"mock provider latency {args.latency_ms} ms; rounds {args.rounds}; load client {', '.join(args.client)}")

        stamp = secrets.token_hex(3)
        results: dict[tuple[str, str, str], Window] = {}  # (client, system, window)
        for rnd in range(args.rounds):
            for window, body, conc, count_opt in WINDOWS:
                for s, client in ((s, c) for s in systems for c in args.client):
                    waited, cores = wait_idle(every_root, below=args.idle_cores)
                    run_id = f"rivals-{stamp}-{s.name}-{window}-{rnd}-{client}"
                    table, machine_before, t0 = proc_table(), machine_ticks(), time.monotonic()
                    ours_before, parts_before = tree_ticks(every_root() + [os.getpid()], table), ticks_by_part(table, parts(), os.getpid())
                    w = drive(s.url, {**s.headers, RUN_HEADER: run_id}, body, getattr(args, count_opt), conc, client)
                    spent = time.monotonic() - t0
                    parts_at_end = ticks_by_part(proc_table(), parts(), os.getpid())
                    ours_cores = busy_cores(ours_before, tree_ticks(every_root() + [os.getpid()]), spent)
                    others = max(0.0, (machine_ticks() - machine_before) / CLK_TCK / spent - ours_cores)
                    s.runs[run_id] = len(w.latencies)
                    note = ""
                    if window == "sustained" and s.logged_to:
                        parts_after: list[dict[str, int]] = []
                        seen, w.drain = visible(s, run_id, len(w.latencies), timeout=180,
                                                counted=partial(snapshot_parts, parts_after))
                        note = (f", {seen}/{len(w.latencies)} visible in the api {w.drain:.2f}s after the load: "
                                f"sustained {w.rate:.0f} rps; CPU per request until the api counted them all: "
                                f"{cpu_per_request(parts_before, parts_after[-1], len(w.latencies))}")
                    else:  # each process's share of the window (at c=1: what runs beside the request path)
                        note = f"; CPU per request during the load: {cpu_per_request(parts_before, parts_at_end, len(w.latencies))}"
                    by = f" {client:7s}" if len(args.client) > 1 else ""
                    say(f"round {rnd + 1} {window:10s} {s.name:8s}{by} c={conc:<2d} n={w.sent} errors={w.errors} "
                        f"{w.sent / w.seconds:7.0f} rps p50 {fmt_ms(quantile(w.latencies, .5))} ms "
                        f"p99 {fmt_ms(quantile(w.latencies, .99))} ms first byte p50 {fmt_ms(quantile(w.first_bytes, .5))} ms"
                        f"{note} (waited {waited:.1f}s for idle, {cores:.3f} cores; bench processes used {ours_cores:.2f} cores, "
                        f"other work on the machine {others:.2f})")
                    results.setdefault((client, s.name, window), Window()).add(w)

        waited, cores = wait_idle(every_root, below=args.idle_cores, timeout=120)
        say(f"after the last window: idle after {waited:.1f}s ({cores:.3f} cores); load average {os.getloadavg()[0]:.2f}")
        report(systems, args.client, results, stack, pg, say)


# issue 9's goals for one gateway process: sustained >= 3x Portkey and >= 30x LiteLLM; c=1 overhead p50 <= 0.3 ms and
# p99 <= 1 ms; the first streamed byte adds <= 0.3 ms
SUSTAINED_GOALS = (("portkey", 3.0), ("litellm", 30.0))
C1_GOALS_MS = (0.3, 1.0)
FIRST_BYTE_GOAL_MS = 0.3
# ours, and whether its events reach the api (so that its sustained rate counts toward the goals)
OURS = (("ours-gw", True), ("ours-gw-noingest", False), ("ours-all", True))


def overheads(results: dict, name: str, base: str) -> tuple[float, float, float]:
    """ms that `name` adds over `base`: c=1 p50 and p99, and the first streamed byte's p50."""
    c1, base_c1 = results[(name, "c1")].latencies, results[(base, "c1")].latencies
    fb, base_fb = results[(name, "stream-c1")].first_bytes, results[(base, "stream-c1")].first_bytes
    return ((quantile(c1, .5) - quantile(base_c1, .5)) * 1000, (quantile(c1, .99) - quantile(base_c1, .99)) * 1000,
            (quantile(fb, .5) - quantile(base_fb, .5)) * 1000)


def goal_lines(systems: list[System], results: dict, sustained: dict[str, float]) -> list[str]:
    """Ours against the goals, one line per system of ours: ratios of sustained rates and the overheads;
    with the byte relay measured, first what it adds (the floor), then each of ours over it."""
    names = {s.name for s in systems}
    out = []
    if "relay" in names:
        p50, p99, fb = overheads(results, "relay", "direct")
        out.append(f"floor: a byte relay adds c=1 {p50:+.2f} / {p99:+.2f} ms, first streamed byte {fb:+.2f} ms "
                   "(one more process hop, no HTTP work)")
    for ours, logged in OURS:
        if ours not in names:
            continue
        parts = [f"{ours} sustained / {rival} {sustained[ours] / sustained[rival]:.2f} (goal >= {goal:g})"
                 for rival, goal in SUSTAINED_GOALS if logged and rival in names and sustained.get(rival)]
        p50, p99, fb = overheads(results, ours, "direct")
        parts.append(f"c=1 overhead {p50:+.2f} / {p99:+.2f} ms (goal <= {C1_GOALS_MS[0]} / {C1_GOALS_MS[1]})")
        parts.append(f"first streamed byte {fb:+.2f} ms (goal <= {FIRST_BYTE_GOAL_MS})")
        if "relay" in names:
            p50, p99, fb = overheads(results, ours, "relay")
            parts.append(f"over the relay {p50:+.2f} / {p99:+.2f} ms, first byte {fb:+.2f} ms")
        out.append(("goals: " if logged else f"{ours}, without ingest on its cores: ") + "; ".join(parts))
    return out


def report(systems: list[System], clients: list[str], results: dict, stack, pg, say: Callable[[str], None]) -> None:
    """Each system's memory, journal counters and completeness, then a table and the goal lines per load client."""
    extras, completeness = {}, []
    for s in systems:
        tree = descendants({pid: ppid for pid, (ppid, _) in proc_table().items()}, s.pids())
        rss, peak = rss_kb(tree) / 1024, rss_kb(tree, "VmHWM") / 1024
        spooled = "—"
        if s.metrics_url:
            text = httpx.get(f"{s.metrics_url}/metrics", timeout=10).text
            for name, value in sorted(metric_series(text, SPOOL_METRICS).items()):
                say(f"{s.name} /metrics {name} {value:g}")
            spooled = spooled_cell(text)
        logged = "—"
        if s.logged_to:
            answered = sum(s.runs.values())
            seen = sum(visible(s, run, n, timeout=120)[0] for run, n in s.runs.items())
            logged = f"{seen}/{answered}"
            completeness.append(seen == answered)
        extras[s.name] = (f"{rss:.0f} ({peak:.0f})", spooled, logged)
    for name, pids in (("postgres (ours' store)", [pg.postmaster_pid() or 0]), ("broker (ours')", [stack.kafka.pid or 0])):
        tree = descendants({pid: ppid for pid, (ppid, _) in proc_table().items()}, pids)
        say(f"RSS {name}: {rss_kb(tree) / 1024:.0f} MB")
    for client in clients:
        by_client = {(name, window): w for (c, name, window), w in results.items() if c == client}
        say("")
        if len(clients) > 1:
            say(f"load client: {client}")
        say(markdown_table(
            ["system", "c=1 overhead p50 / p99 ms", "c=1 p50 / p99 ms", "burst c=32 rps", "burst p99 ms", "sustained rps",
             "stream first byte (c=1) ms", "stream rps c=32", "RSS MB (peak)", "events spooled", "in the api", "errors"],
            [table_row(s, by_client, extras[s.name]) for s in systems]))
        say("Rates: the best of the rounds; latencies: every round's requests pooled; overhead: the system minus direct.")
        sustained = {s.name: by_client[(s.name, "sustained")].best_rate for s in systems}
        for line in goal_lines(systems, by_client, sustained):
            say(line)
    if any(extra[1] == "n/a¹" for extra in extras.values()):
        say("¹ no helicone_gateway_events_spooled_total on this build: every event goes through the journal "
            "(its helicone_gateway_journal_* series are listed above)")
    if not all(completeness):
        say("NOT every request answered by ours is visible in the api (see 'in the api')")
        sys.exit(1)


def table_row(s: System, results: dict, extras: tuple[str, str, str]) -> list[str]:
    """The README table's row of one system: `results` maps (system, window) to its pooled Window."""
    direct = {name: results[("direct", name)] for name, *_ in WINDOWS}
    c1, burst, sus = results[(s.name, "c1")], results[(s.name, "burst")], results[(s.name, "sustained")]
    sc1, s32 = results[(s.name, "stream-c1")], results[(s.name, "stream-c32")]
    errors = sum(results[(s.name, w)].errors for w, *_ in WINDOWS)
    is_direct = s.name == "direct"
    return [
        s.label,
        "—" if is_direct else f"{fmt_ms(quantile(c1.latencies, .5) - quantile(direct['c1'].latencies, .5), True)} / "
                              f"{fmt_ms(quantile(c1.latencies, .99) - quantile(direct['c1'].latencies, .99), True)}",
        f"{fmt_ms(quantile(c1.latencies, .5))} / {fmt_ms(quantile(c1.latencies, .99))}",
        f"{burst.best_rate:,.0f}", fmt_ms(quantile(burst.latencies, .99)),
        f"{sus.best_rate:,.0f}",
        "—" if is_direct else fmt_ms(quantile(sc1.first_bytes, .5) - quantile(direct["stream-c1"].first_bytes, .5), True),
        f"{s32.best_rate:,.0f}", *extras, str(errors),
    ]


if __name__ == "__main__":
    main()
