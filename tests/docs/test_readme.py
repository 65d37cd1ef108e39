"""README.md as a newcomer runs it: every `bash` and `python` fenced block, in order, from the repo
root, against the stack its first block starts (`make up UPSTREAM=fake DETACH=1`).

What differs from a newcomer's machine, and only that: the stack runs on free loopback ports and a
temporary data dir, so the default ports in the blocks (8787, 8585) and `.helicone-data` are
replaced by those, and make gets them as environment variables the runner reads
(HELICONE_*_PORT, DATA_DIR) plus PY=<this interpreter> (no .venv set-up). A `text` block is
output; any other block needs a `<!-- not-run: reason -->` line right before it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
OUTPUT = {"text"}
FENCE = re.compile(r"^```(\S*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(\S.*?)\s*-->\s*$")

pytestmark = pytest.mark.e2e


@dataclass
class Block:
    line: int
    lang: str
    text: str
    not_run: str | None


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        marker = NOT_RUN.match(prev)
        blocks.append(Block(start + 1, lang, "\n".join(lines[start + 1:j]) + "\n", marker.group(1) if marker else None))
        i = j + 1
    return blocks


def test_every_readme_block_is_runnable_output_or_says_why_not():
    unmarked = [f"README.md:{b.line} ```{b.lang or '(no language)'}" for b in readme_blocks(README.read_text())
                if b.not_run is None and b.lang not in RUNNABLE and b.lang not in OUTPUT]
    assert not unmarked, ("blocks the README test cannot run; mark them `<!-- not-run: reason -->` "
                          f"or make them bash/python: {unmarked}")
    cluster = [b.line for b in readme_blocks(README.read_text()) if re.search(r"^\s*(helm|kubectl)\b", b.text, re.M)
               and b.not_run is None]
    assert not cluster, f"helm/kubectl blocks must be marked not-run (no cluster here): lines {cluster}"


def test_block_parser_sees_markers_and_languages():
    blocks = readme_blocks("a\n<!-- not-run: needs a cluster -->\n\n```bash\nhelm x\n```\n```\nplain\n```\n```python\nprint(1)\n```\n")
    assert [(b.lang, b.not_run, b.text) for b in blocks] == [
        ("bash", "needs a cluster", "helm x\n"), ("", None, "plain\n"), ("python", None, "print(1)\n")]


def test_readme_blocks_run_as_written(tmp_path):
    blocks = [b for b in readme_blocks(README.read_text()) if b.not_run is None and b.lang in RUNNABLE]
    assert blocks and "make up UPSTREAM=fake DETACH=1" in blocks[0].text, "the first runnable block starts the stack"
    data_dir = tmp_path / "helicone-data"
    ports = {name: free_port() for name in ("gateway", "api", "ingest", "prompts", "prompts_grpc", "kafka", "fake_upstream")}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELICONE_", "OPENAI_", "ANTHROPIC_"))}
    env.update({f"HELICONE_{name.upper()}_PORT": str(p) for name, p in ports.items()})
    env.update(PY=sys.executable, DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1",
               HELICONE_BROKER_REBALANCE_TIMEOUT="2", HELICONE_BATCH_WITHIN="0.2")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    def localize(text: str) -> str:
        text = text.replace(":8787", f":{ports['gateway']}").replace(":8585", f":{ports['api']}")
        return text.replace(".helicone-data", str(data_dir))

    output_block = next(b.text for b in readme_blocks(README.read_text()) if b.lang == "text")
    timings = []
    try:
        for block in blocks:
            code = localize(block.text)
            argv = ["bash", "-euo", "pipefail", "-c", code] if RUNNABLE[block.lang] == "bash" else [sys.executable, "-c", code]
            t0 = time.monotonic()
            done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
            timings.append((block.line, round(time.monotonic() - t0, 1)))
            assert done.returncode == 0, (f"README.md:{block.line} ({block.lang}) exited {done.returncode}\n"
                                          f"--- block\n{code}--- stdout\n{done.stdout[-3000:]}--- stderr\n{done.stderr[-3000:]}")
            if re.search(r"^make up\b", block.text, re.M):
                assert "READY" in done.stdout and "Helicone API key:" in done.stdout, done.stdout
                documented = re.findall(r"^  (\w+) +[\d.]+s ", output_block, re.M)
                shown = re.findall(r"^  (\w+) +[\d.]+s ", done.stdout, re.M)
                assert documented == shown, f"the README's sample output lists steps {documented}, up printed {shown}"
            if block.lang == "python" and "stream_options" in block.text:
                _assert_streamed_usage_logged(f"http://127.0.0.1:{ports['api']}", data_dir)
            if re.search(r"^make demo\b", block.text, re.M):
                assert done.stdout.count(" status 200 ") == 3, done.stdout
            if re.search(r"^make status\b", block.text, re.M):
                assert done.stdout.count(" ready ") >= 4, done.stdout
            if re.search(r"^make down\b", block.text, re.M):
                assert "stopped " in done.stdout, done.stdout
        print("README blocks (line, seconds):", timings)
        assert not (data_dir / "runner.pid").exists(), "make down left the runner's pid file"
    finally:
        _force_down(data_dir, env)


def _force_down(data_dir: Path, env: dict) -> None:
    """If a block failed with the stack up: stop it the documented way, then make sure."""
    from helicone_runner.control import runner_pid

    if runner_pid(data_dir) is None:
        return
    subprocess.run([sys.executable, "-m", "helicone_runner", "down", "--data-dir", str(data_dir)], env=env, timeout=90)
    pid = runner_pid(data_dir)
    if pid is not None:
        os.kill(pid, 9)



def _assert_streamed_usage_logged(api: str, data_dir: Path) -> None:
    """The python block streams with stream_options include_usage: its request (session s-1) is
    logged with known usage and cost, not as unknown."""
    import httpx

    key = json.loads((data_dir / "bootstrap-key.json").read_text())["key"]
    deadline = time.monotonic() + 30
    while True:
        r = httpx.post(f"{api}/v1/request/query", headers={"Authorization": f"Bearer {key}"},
                       json={"filter": {"session_id": "s-1"}, "limit": 5}, timeout=10)
        assert r.status_code == 200, r.text
        rows = r.json()["data"]
        if rows:
            break
        assert time.monotonic() < deadline, "the streamed SDK request never reached the api"
        time.sleep(0.3)
    [row] = rows
    assert row["usage"]["known"] and row["usage"]["completion_tokens"] > 0 and row["cost_usd"] is not None, row
