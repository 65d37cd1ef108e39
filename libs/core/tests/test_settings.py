import pytest
from helicone_core.settings import CommonSettings
from pydantic import ValidationError


@pytest.mark.parametrize("region", ["", "eu-west-1", "us-east-2", "local", "a" * 32])
def test_region_accepts_empty_or_short_plain_names(region):
    assert CommonSettings(region=region, _env_file=None).region == region


def test_region_from_the_environment(monkeypatch):
    monkeypatch.setenv("HELICONE_REGION", "ap-south-1")
    assert CommonSettings(_env_file=None).region == "ap-south-1"


@pytest.mark.parametrize("region", ["EU-West-1", "eu west 1", "eu_west_1", "a" * 33, "eu-west-1\n", "région"])
def test_an_invalid_region_is_a_clear_settings_error(region, monkeypatch):
    monkeypatch.setenv("HELICONE_REGION", region)
    with pytest.raises(ValidationError) as info:
        CommonSettings(_env_file=None)
    [error] = info.value.errors()
    assert error["loc"] == ("region",)
    assert "HELICONE_REGION" in error["msg"] and "lower-case letters, digits and '-'" in error["msg"]
