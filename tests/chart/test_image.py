"""The image the chart deploys: one Dockerfile, a pinned base, a non-root user the chart's security
context agrees with, and every module the chart runs is installed by it. (No Docker engine here: the
build itself is not run.)"""

from __future__ import annotations

import importlib.util
import re

import yaml

from tests.chart.render import CHART_DIR, REQUIRED, ROOT, objects, render

DOCKERFILE = ROOT / "Dockerfile"


def test_one_dockerfile_with_a_base_pinned_by_digest():
    assert not list(ROOT.glob("services/*/Dockerfile")), "one shared Dockerfile, not one per service"
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms), froms


def test_image_user_is_the_charts_non_root_user():
    text = DOCKERFILE.read_text()
    user = re.findall(r"^USER (\d+):(\d+)$", text, re.M)
    assert user and user[-1] != ("0", "0")
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    pod = values["defaults"]["podSecurityContext"]
    assert (str(pod["runAsUser"]), str(pod["runAsGroup"])) == user[-1]


def test_every_command_the_chart_runs_is_in_the_image():
    text = DOCKERFILE.read_text()
    services = re.search(r'^ARG SERVICES="([^"]+)"$', text, re.M).group(1).split()
    objs = objects(render(REQUIRED))
    commands = [c["command"] for o in objs if o["kind"] in ("Deployment", "Job")
                for c in o["spec"]["template"]["spec"]["containers"]]
    assert len(commands) == 5
    for command in commands:
        assert command[:2] == ["python", "-m"], command
        module = command[2]
        assert importlib.util.find_spec(module) is not None, module
        top = module.split(".")[0]
        assert top in ("helicone_core",) or top.removeprefix("helicone_") in services, module


def test_documented_image_name_is_the_charts():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    name = f'{values["image"]["registry"]}/{values["image"]["repository"]}'
    assert f"docker build -t {name}:" in DOCKERFILE.read_text()
    assert name in (CHART_DIR / "README.md").read_text()
