"""The gateway canary's AnalysisTemplate queries, evaluated by Prometheus' own engine (`promtool test rules`
with promql_expr_test): they measure the canary pods only (never the stable ones), and a canary without
traffic measures 0 rather than NaN (which Argo would count as a failed measurement and roll back)."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.tests.test_proxy import StubKeys
from tests.chart.render import REQUIRED, by_kind, objects, render

PROMTOOL = shutil.which("promtool") or "promtool missing: `make setup` installs Debian's prometheus package"
CANARY, STABLE = "c4n4ry", "st4bl3"


@pytest.fixture(scope="module")
def queries() -> dict[str, str]:
    objs = objects(render(REQUIRED, {"components": {"gateway": {"rollout": {"enabled": True}}}}))
    (template,) = by_kind(objs, "AnalysisTemplate").values()
    # what Argo does with the Rollout's canary-hash argument before it queries Prometheus
    return {m["name"]: m["provider"]["prometheus"]["query"].replace("{{args.canary-hash}}", CANARY)
            for m in template["spec"]["metrics"]}


def series(name: str, hash_: str, values: str, **labels: str) -> dict:
    labels = {"namespace": "helicone", "pod": f"gw-{hash_}", "rollouts_pod_template_hash": hash_, **labels}
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def promtool_expect(tmp_path, input_series: list[dict], expr: str, value: float | None) -> None:
    samples = [] if value is None else [{"labels": "{}", "value": value}]
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": input_series,
        "promql_expr_test": [{"expr": expr, "eval_time": "10m", "exp_samples": samples}]}]}
    path = tmp_path / "analysis_test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    done = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_error_ratio_is_the_canarys_own(tmp_path, queries):
    requests = "helicone_gateway_requests_total"
    promtool_expect(tmp_path, [
        series(requests, CANARY, "0+54x10", status_class="2xx", provider="openai"),
        series(requests, CANARY, "0+6x10", status_class="5xx", provider="openai"),
        series(requests, STABLE, "0+100x10", status_class="2xx", provider="openai"),
        series(requests, STABLE, "0+100x10", status_class="5xx", provider="openai"),  # a bad stable must not fail the canary
    ], queries["error-ratio"], 0.1)


def test_error_ratio_is_zero_for_a_canary_without_errors_or_traffic(tmp_path, queries):
    requests = "helicone_gateway_requests_total"
    promtool_expect(tmp_path, [series(requests, CANARY, "0+60x10", status_class="2xx", provider="openai")],
                    queries["error-ratio"], 0)
    promtool_expect(tmp_path, [series(requests, STABLE, "0+60x10", status_class="5xx", provider="openai")],
                    queries["error-ratio"], 0)  # no canary series at all
    promtool_expect(tmp_path, [series(requests, CANARY, "5+0x10", status_class="2xx", provider="openai")],
                    queries["error-ratio"], 0)  # series, but no requests in the window: 0/0 must not be NaN


def test_p95_time_to_first_byte_is_the_canarys_own(tmp_path, queries):
    bucket = "helicone_gateway_upstream_ttfb_seconds_bucket"
    fast = [series(bucket, CANARY, "0+10x10", le=le, provider="openai") for le in ("0.5", "1", "+Inf")]
    slow = [series(bucket, STABLE, "0+10x10" if le == "+Inf" else "0+0x10", le=le, provider="openai")
            for le in ("0.5", "1", "+Inf")]
    promtool_expect(tmp_path, fast + slow, queries["p95-time-to-first-byte"], 0.475)
    promtool_expect(tmp_path, slow, queries["p95-time-to-first-byte"], 0)  # no canary traffic yet


class _BrokenRouter:
    """A bug of a new version on the path every proxied request takes."""

    def route(self, path, headers, target_url):
        raise RuntimeError("a bug in the canary")


async def test_a_canary_that_fails_every_request_fails_the_error_ratio(tmp_path, queries):
    """The real gateway with a bug its code does not catch answers 500 to every request: the canary's
    series must say so, or the analysis measures 0 and the broken version is promoted."""
    from helicone_gateway.app import create_app
    from helicone_gateway.settings import GatewaySettings

    app = create_app(GatewaySettings(data_dir=tmp_path / "gw", _env_file=None, kafka_bootstrap="127.0.0.1:1"))
    gw = app.state.gateway
    gw.keys = StubKeys()  # "good-key" is an org's
    await gw.start()
    try:
        gw.router = _BrokenRouter()
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # as the server: a 500
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            for _ in range(3):
                r = await client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                                      headers={"Helicone-Auth": "Bearer good-key"})
                assert r.status_code == 500
            exposition = (await client.get("/metrics")).text
    finally:
        await gw.stop()
    # the scraped counters as the canary pod's series: each value reached again every minute
    requests = "helicone_gateway_requests_total"
    scraped = [series(requests, CANARY, f"0+{int(s.value)}x10", **s.labels)
               for family in text_string_to_metric_families(exposition) for s in family.samples if s.name == requests]
    promtool_expect(tmp_path, scraped, queries["error-ratio"], 1)
