"""The dashboard's page and assets: served without a key, under a Content-Security-Policy that allows
no inline script, while every other path still needs a key; the wheel ships the assets."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import httpx
import pytest
from helicone_api.dashboard import CONTENT_SECURITY_POLICY

from services.api.tests.test_guard import guarded  # noqa: F401  (fixture)
from tests.support.wheel import build_wheel

API_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture
async def client(guarded):  # noqa: F811
    app, _state, key = guarded
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
        yield c, key


def assets_of(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/static/[^"]+)"', page)


async def test_page_is_public_and_allows_only_own_scripts(client):
    c, _key = client
    r = await c.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    page = r.text
    # no inline script or handler for the CSP to block: every <script> is an empty element with a src
    assert all(attrs.count("src=") == 1 and not body.strip() for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S))
    assert not re.search(r"\son[a-z]+=", page) and " style=" not in page
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page), "the page must load nothing from another origin"
    assert set(assets_of(page)) == {"/static/uPlot.min.css", "/static/dashboard.css", "/static/uPlot.iife.min.js",
                                    "/static/dashboard.js"}


async def test_assets_are_public_with_their_types(client):
    c, _key = client
    page = (await c.get("/")).text
    types = {".js": "text/javascript", ".css": "text/css"}
    for path in assets_of(page):
        r = await c.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith(types[Path(path).suffix]), path
        assert r.headers["x-content-type-options"] == "nosniff"
    lic = await c.get("/static/uPlot.LICENSE")
    assert lic.status_code == 200 and "MIT License" in lic.text


async def test_uptime_probes_may_ask_with_head(client):
    c, key = client
    for path in ("/", "/static/dashboard.js"):
        got, head = await c.get(path), await c.head(path)
        assert head.status_code == 200, (path, head.status_code)
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.headers["content-length"] == str(len(got.content)), path
        assert head.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
    assert (await c.head("/static/nope.js")).status_code == 401  # still only the shipped files are public
    assert (await c.head("/v1/keys")).status_code == 401


async def test_nothing_else_is_opened(client):
    c, key = client
    for path in ("/static/nope.js", "/static/index.html", "/static/", "/index.html", "/v1/keys"):
        r = await c.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
    assert (await c.post("/v1/request/query", json={})).status_code == 401
    auth = {"Authorization": f"Bearer {key}"}
    missing = await c.get("/static/nope.js", headers=auth)
    assert missing.status_code == 404 and "nope.js" in missing.json()["error"]["message"]
    assert (await c.get("/static/index.html", headers=auth)).status_code == 404  # the page lives at / only


def test_wheel_ships_the_assets(tmp_path):
    source = tmp_path / "api"  # a copy: the build leaves build/ and egg-info next to the sources
    shutil.copytree(API_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
    wheel = build_wheel(source, tmp_path / "dist")
    assert wheel.name.startswith("helicone_api-")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (API_DIR / "src/helicone_api/static").iterdir()}
    assert {"index.html", "dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE"} <= shipped
    assert {f"helicone_api/static/{n}" for n in shipped} <= names
