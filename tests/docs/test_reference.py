"""The README's reference sections against the code they describe, without starting anything: the gateway's
header table against the header parser, the api routes against the real app's OpenAPI, the HELICONE_*
variables against the settings classes, metric names against the registrations, `helicone-stack` flags
against its parser and `make` targets against the Makefile."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = {name: (ROOT / name).read_text() for name in ("README.md", "charts/helicone/README.md", "k8s/README.md")}


def section(text: str, heading: str) -> str:
    """A `## heading` section of the README, up to the next `## ` heading."""
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


# --- the gateway's Helicone-* request headers

_HEADER = re.compile(r"^(Helicone-[A-Za-z0-9-]+|-[A-Za-z0-9-]+)")


def table_headers(cell: str) -> list[str]:
    """The header names of a table cell: `Helicone-Session-Id` / `-Path` spells Helicone-Session-Path (the
    shorthand replaces as many trailing words of the name before it as it has); `<Name>` is a placeholder."""
    names: list[str] = []
    for code in re.findall(r"`([^`]+)`", cell):
        m = _HEADER.match(code.replace("<Name>", "env").replace("<name>", "env"))
        if not m:
            continue
        name = m.group(1)
        if name.startswith("-"):
            if not names:
                continue
            words = names[-1].split("-")
            name = "-".join(words[:len(words) - (name.count("-"))]) + name
        names.append(name)
    return names


def gateway_table() -> tuple[set[str], set[str]]:
    """(headers the README's gateway table says the gateway reads, headers it says are ignored)."""
    rows = [line for line in section(README, "Gateway reference").splitlines() if line.startswith("| `") or line.startswith("| any other")
            or line.startswith("| answer:")]
    assert rows, "the README's gateway header table was not found"
    read, ignored = set(), set()
    for row in rows:
        cell = row.split(" | ")[0]
        if cell.startswith("| answer:"):
            continue  # headers of the gateway's answers
        (ignored if cell.startswith("| any other") else read).update(table_headers(cell))
    return read, ignored


def gateway_reads(name: str) -> bool:
    """Whether the gateway's parser acts on a request header of this name (it sets something, or refuses
    the value as a value of that header; a name it refuses as unknown is not one it reads)."""
    from helicone_gateway.cache import cache_directive
    from helicone_gateway.headers import HeaderError, HeliconeHeaders, parse_helicone_headers

    try:
        parsed = parse_helicone_headers([(name.lower(), "x")])
        if parsed.cache is not None:
            cache_directive(parsed.cache, "")  # Helicone-Cache-* names are checked here, as the gateway does
        return parsed != HeliconeHeaders()
    except HeaderError as exc:
        return "unknown header" not in str(exc)


def header_names_in_code() -> set[str]:
    """Every Helicone-* name spelled in the modules that read request headers."""
    import helicone_core.log_headers
    import helicone_gateway.cache
    import helicone_gateway.headers
    import helicone_gateway.prompts
    import helicone_gateway.providers
    import helicone_gateway.ratelimit
    import helicone_gateway.resilience

    names = set()
    for module in (helicone_core.log_headers, helicone_gateway.cache, helicone_gateway.headers, helicone_gateway.prompts,
                   helicone_gateway.providers, helicone_gateway.ratelimit, helicone_gateway.resilience):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
                text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
                if re.fullmatch(r"(?i)helicone-[a-z0-9-]*[a-z0-9]", text):
                    names.add(text)
    return names


def prefixes_in_code() -> set[str]:
    """The Helicone-* name prefixes the gateway's header modules spell (helicone-cache-, helicone-property-, ...)."""
    import helicone_core.log_headers
    import helicone_gateway.headers
    import helicone_gateway.resilience

    found = set()
    for module in (helicone_core.log_headers, helicone_gateway.headers, helicone_gateway.resilience):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"(?i)helicone-[a-z-]+-", node.value):
                found.add(node.value.lower())
    return found


def test_table_parser_reads_shorthands():
    assert table_headers("| `Helicone-Session-Id` / `-Path` / `-Name`") == [
        "Helicone-Session-Id", "Helicone-Session-Path", "Helicone-Session-Name"]
    assert table_headers("`Helicone-Retry-Min-Timeout` / `-Max-Timeout: <ms>`") == [
        "Helicone-Retry-Min-Timeout", "Helicone-Retry-Max-Timeout"]
    assert table_headers("`Helicone-Property-<Name>: value`") == ["Helicone-Property-env"]


def test_every_header_of_the_readme_table_is_read_by_the_gateway_and_the_ignored_ones_are_not():
    read, ignored = gateway_table()
    assert len(read) > 20 and ignored
    assert sorted(h for h in read if not gateway_reads(h)) == [], "the README's table names headers the gateway does not read"
    assert sorted(h for h in ignored if gateway_reads(h)) == [], "the README calls headers ignored that the gateway reads"


def test_every_header_the_gateway_reads_is_in_the_readme_table():
    read, _ = gateway_table()
    documented = {h.lower() for h in read}
    missing = sorted({n.lower() for n in header_names_in_code() if gateway_reads(n)} - documented)
    assert not missing, f"request headers the gateway reads that the README's gateway table leaves out: {missing}"


def test_the_readme_says_which_unknown_helicone_names_are_refused_rather_than_ignored():
    """The table's last row says any other Helicone-* header is ignored; under a prefix the gateway owns, an
    unknown name (a misspelt one) is a 400 instead, and the row must say so for each such prefix."""
    refused = [prefix for prefix in sorted(prefixes_in_code()) if _refused(prefix + "no-such-name")]
    assert refused, "no prefix of the gateway refuses unknown names?"
    row = next(line for line in section(README, "Gateway reference").splitlines() if line.startswith("| any other"))
    unsaid = [p for p in refused if f"`{_title(p)}*`" not in row]
    assert not unsaid, f"the README's 'any other Helicone-*' row must say that unknown names under {unsaid} are a 400"


def _refused(name: str) -> bool:
    from helicone_gateway.cache import cache_directive
    from helicone_gateway.headers import HeaderError, parse_helicone_headers

    try:
        parsed = parse_helicone_headers([(name, "x")])
        if parsed.cache is not None:
            cache_directive(parsed.cache, "")
    except HeaderError as exc:
        return "unknown header" in str(exc)
    return False


def _title(prefix: str) -> str:
    """helicone-cache- -> Helicone-Cache- (as the README spells the families)."""
    return "-".join(w.capitalize() for w in prefix.split("-"))


# --- the api's routes

_ROUTE = re.compile(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`\s?]*)")


def _route_shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}|(?<=/)[A-Z][A-Z_]*$", "{}", path)  # /v1/keys/{id}, /v1/keys/ID: one route


def test_every_api_route_of_the_readme_is_served_and_every_route_served_is_in_the_readme(tmp_path):
    from helicone_api.app import create_app
    from helicone_api.settings import ApiSettings

    app = create_app(ApiSettings(_env_file=None, data_dir=tmp_path, body_store="local"))  # nothing started
    served = {(method.upper(), _route_shape(path)) for path, ops in app.openapi()["paths"].items() for method in ops}
    documented = {(method, _route_shape(path)) for method, path in _ROUTE.findall(README)}
    assert sorted(documented - served) == [], "routes the README documents that the api does not serve"
    assert sorted(served - documented) == [], "routes the api serves that the README does not document"


# --- settings

def _settings_variables() -> set[str]:
    from helicone_api.settings import ApiSettings
    from helicone_core.migrate import MigrateSettings
    from helicone_gateway.settings import GatewaySettings
    from helicone_ingest.settings import IngestSettings
    from helicone_prompts.settings import PromptsSettings
    from helicone_runner.cli import build_parser
    from helicone_runner.settings import EmbeddedBrokerSettings

    names = set()
    for cls in (GatewaySettings, ApiSettings, IngestSettings, PromptsSettings, MigrateSettings, EmbeddedBrokerSettings):
        prefix = cls.model_config.get("env_prefix", "")
        names |= {(prefix + field).upper() for field in cls.model_fields}
    names |= set(re.findall(r"\[env (HELICONE_[A-Z0-9_]+)", _all_help(build_parser())))  # the runner's options
    return names


def _all_help(parser) -> str:
    import argparse

    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            text += "".join(_all_help(sub) for sub in action.choices.values())
    return text


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_helicone_variable_the_docs_name_is_a_setting(doc):
    named = set(re.findall(r"HELICONE_[A-Z0-9_]*[A-Z0-9]", DOCS[doc]))
    assert sorted(named - _settings_variables()) == [], f"{doc} names variables no settings class reads"


# --- metrics

def _registered_metrics() -> set[str]:
    names = set()
    for source in [*ROOT.glob("libs/core/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("runner/src/**/*.py")]:
        names |= set(re.findall(r"(?:counter|gauge|histogram|Counter|Gauge|Histogram)\(\s*\"(helicone_[a-z0-9_]+)\"",
                                source.read_text()))
    return names


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_metric_the_docs_name_is_registered(doc):
    registered = _registered_metrics()
    assert "helicone_gateway_requests_total" in registered
    # prometheus_client adds _total to a counter's name only when it lacks it; histograms add _bucket/_count/_sum
    named = {m for m in re.findall(r"\b(helicone_(?:gateway|ingest|api|prompts|service)_[a-z0-9_]+)", DOCS[doc])}
    unknown = sorted(m for m in named if not ({m, re.sub(r"_(bucket|count|sum)$", "", m)} & registered))
    assert not unknown, f"{doc} names metrics no service registers"


# --- helicone-stack and make

def test_every_helicone_stack_option_and_command_of_the_readme_exists():
    from helicone_runner.cli import build_parser

    known = _all_help(build_parser())
    options = set(re.findall(r"(--[a-z][a-z0-9-]*)", known))
    commands = set(re.findall(r"\{([a-z,]+)\} \.\.\.", known)[0].split(","))
    named = set(re.findall(r"helicone-stack ([a-z]+)", README))
    assert named and sorted(named - commands) == [], f"helicone-stack commands the README names that it lacks: {named - commands}"
    # the options in lines that run helicone-stack or `make up`, and every one the embedded-mode section names
    runs = re.findall(r"helicone-stack[^\n`]*|make up ARGS=\"[^\"]*\"", README)
    runs += re.findall(r"`([^`]+)`", section(README, "Embedded mode and production"))
    documented = {flag for text in runs for flag in re.findall(r"(?<![\w*-])(--[a-z][a-z0-9-]*[a-z0-9])", text)}
    assert len(documented) > 10, f"too few helicone-stack options found in the README: {documented}"
    assert sorted(documented - options) == [], "helicone-stack options the README names that it does not take"


def test_every_make_target_the_docs_name_exists():
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))
    for doc, text in DOCS.items():
        named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", text)) | set(re.findall(r"^make ([a-z][a-z0-9-]*)", text, re.M))
        assert sorted(named - targets) == [], f"{doc} names make targets the Makefile lacks"
