"""`helicone-stack demo`: a few requests through the running stack's gateway with the official
openai SDK (one streaming, with usage), then each one as the api returns it, and the commands
that query them. Against the fake provider any provider key works; against the real one it
uses OPENAI_API_KEY."""

from __future__ import annotations

import json
import os
import shlex
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from . import control

PROMPTS = ("What is an LLM gateway?", "Say hello in French.")


def _get(url: str, key: str) -> dict | None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise RuntimeError(f"GET {url} answered {exc.code}: {exc.read()[:200]!r}") from None


def run_demo(data_dir: Path, timeout: float) -> int:
    data_dir = data_dir.resolve()
    state = control.read_state(data_dir) if control.runner_pid(data_dir) else None
    if state is None:
        print(control.not_running_message(data_dir))
        return control.NOT_RUNNING
    services = state["services"]
    if "gateway" not in services or "api" not in services:
        raise RuntimeError("the demo needs the gateway and the api: start `up` with --target all")
    if not state.get("key"):
        raise RuntimeError("no bootstrap key (external Postgres): create one with `helicone-stack keys create`")
    key = state["key"]["key"]
    gateway, api = services["gateway"]["http"], services["api"]["http"]
    provider_key = "sk-fake-provider-key" if state.get("upstream") else os.environ.get("OPENAI_API_KEY")
    if not provider_key:
        raise RuntimeError("this stack forwards to the real OpenAI: set OPENAI_API_KEY, or run `up --upstream fake`")

    from openai import OpenAI

    session = "demo-" + uuid.uuid4().hex[:8]
    client = OpenAI(base_url=gateway + "/v1", api_key=provider_key, max_retries=0,
                    default_headers={"Helicone-Auth": f"Bearer {key}", "Helicone-Session-Id": session,
                                     "Helicone-User-Id": "demo-user", "Helicone-Property-Source": "helicone-stack-demo"})
    sent: list[tuple[str, str]] = []
    print(f"sending {len(PROMPTS) + 1} requests through {gateway} (session {session}):")
    for prompt in PROMPTS:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        reply = raw.parse().choices[0].message.content
        sent.append((raw.headers["helicone-id"], "chat"))
        print(f"  chat    {raw.headers['helicone-id']}  {prompt!r} -> {reply!r}")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream a short greeting."}], stream=True,
        stream_options={"include_usage": True})
    text = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    sent.append((raw.headers["helicone-id"], "stream"))
    print(f"  stream  {raw.headers['helicone-id']}  streamed {text!r}")

    print("waiting for them in the api (logging is asynchronous)...")
    deadline = time.monotonic() + timeout
    found: dict[str, dict] = {}
    while len(found) < len(sent):
        for rid, _ in sent:
            if rid not in found and (row := _get(f"{api}/v1/request/{rid}", key)) is not None:
                found[rid] = row
        if len(found) < len(sent):
            if time.monotonic() > deadline:
                missing = [rid for rid, _ in sent if rid not in found]
                raise RuntimeError(f"not in the api after {timeout:.0f}s: {', '.join(missing)}; "
                                   "`helicone-stack status` shows which service is not ready")
            time.sleep(0.3)
    for rid, kind in sent:
        row = found[rid]
        usage = row.get("usage") or {}
        print(f"  {kind:7s} {rid}  status {row.get('status')}  model {row.get('model')}  "
              f"tokens {usage.get('prompt_tokens')}+{usage.get('completion_tokens')}  cost_usd {row.get('cost_usd')}")
    key_file = shlex.quote(state["key"]["file"])
    print("\nsee them yourself:")
    print(f"  KEY=$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))[\"key\"])' {key_file})")
    query = json.dumps({"filter": {"session_id": session}, "limit": 10})
    print(f"  curl -s {api}/v1/request/query -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' "
          f"-d '{query}'")
    print(f"  curl -s {api}/v1/request/{sent[-1][0]} -H \"Authorization: Bearer $KEY\"   # one request, both bodies")
    return 0
