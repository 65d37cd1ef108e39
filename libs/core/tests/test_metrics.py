import importlib.metadata

from helicone_core.metrics import ServiceMetrics, build_version


def test_every_service_says_what_runs_where_at_which_version():
    version = importlib.metadata.version("helicone-core")
    assert build_version() == version
    m = ServiceMetrics("ingest", "eu-west-1")
    assert m.registry.get_sample_value(
        "helicone_service_info", {"service": "ingest", "region": "eu-west-1", "version": version}) == 1
    assert m.registry.get_sample_value("helicone_service_up", {"service": "ingest"}) == 1
    text = m.render()[0].decode()
    assert f'helicone_service_info{{region="eu-west-1",service="ingest",version="{version}"}} 1.0' in text
    # without a region the label is empty, and the series is still there
    assert ServiceMetrics("api").registry.get_sample_value(
        "helicone_service_info", {"service": "api", "region": "", "version": version}) == 1
