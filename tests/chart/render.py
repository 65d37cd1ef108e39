"""Renders charts/helicone with the real Helm engine (helm-python-sdk), the way
`helm template -f a.yaml -f b.yaml --set ...` would, and splits the result into objects."""

from __future__ import annotations

import copy
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "helicone"
RELEASE = "hc"
NAMESPACE = "helicone"
# The least an install must say: where Postgres is and the Kafka SASL passwords (no silent defaults for secrets).
REQUIRED = {"postgres": {"dsn": "postgresql://helicone:pw@helicone-pg-rw.helicone-data:5432/helicone"},
            "kafka": {"sasl": {"gateway": {"password": "gw-pw"}, "ingest": {"password": "in-pw"},
                                "api": {"password": "api-pw"}}}}


def merge(base: dict, over: dict) -> dict:
    """Helm's coalescing of values files: maps merge, anything else (lists too) is replaced, null deletes."""
    out = copy.deepcopy(base)
    for key, val in over.items():
        if val is None:
            out.pop(key, None)
        elif isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def values_file(name: str) -> dict:
    return yaml.safe_load((CHART_DIR / name).read_text()) or {}


def load_chart() -> helm.Chart:
    return helm.Chart.load(str(CHART_DIR))


def render(*layers: dict, chart: helm.Chart | None = None, name: str = RELEASE, namespace: str = NAMESPACE) -> dict[str, str]:
    values: dict = {}
    for layer in layers:
        values = merge(values, layer)
    return (chart or load_chart()).render(values, name=name, namespace=namespace, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object of a render (NOTES.txt is text, not an object)."""
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        out += [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}
