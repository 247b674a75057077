"""The API client reads the proxy variables once, as kubectl would, instead of on every request."""

from __future__ import annotations

import pytest
from kubernetes.aio import client as aio_client

from jobgate.kube.api import settle_proxy_once


def configuration(host: str = "https://api.example.com:6443", proxy: str | None = None) -> aio_client.Configuration:
    config = aio_client.Configuration(host=host)
    config.proxy = proxy
    return config


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_https_proxy_applies_and_the_session_stops_reading_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    config = configuration()
    settle_proxy_once(config)
    assert config.proxy == "http://proxy.internal:3128"
    assert config.client_session_kwargs == {"trust_env": False}


def test_no_proxy_exempts_the_api_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", ".example.com")
    config = configuration()
    settle_proxy_once(config)
    assert config.proxy is None


def test_the_kubeconfigs_proxy_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    config = configuration(proxy="http://kubeconfig-proxy:8080")
    settle_proxy_once(config)
    assert config.proxy == "http://kubeconfig-proxy:8080"


def test_without_variables_there_is_no_proxy() -> None:
    config = configuration()
    settle_proxy_once(config)
    assert config.proxy is None
