"""Retry policy (a tokenbox-like 503 injected by the proxy in front of the real server),
configuration from the environment, and parsing details."""

from __future__ import annotations

import email.utils
import time

import pytest

from tokenbox_client import (
    ConfigurationError,
    ProviderUnavailable,
    TokenboxClient,
    TokenboxUnavailable,
    UnexpectedResponse,
)
from tokenbox_client.client import _retry_after

from fakes import CountingProxy, Reply, Tokenbox, unique

UNAVAILABLE = {"error": "provider_unavailable", "message": "the provider is unavailable: 503"}


def connected_app(tokenbox: Tokenbox) -> str:
    app = unique("retry")
    tokenbox.connect(app, "github", access_token=f"{app}~gho", expires_in=7200)
    return app


def test_503_with_retry_after_then_200(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    app = connected_app(tokenbox)
    proxy.inject = [Reply(503, UNAVAILABLE, {"Retry-After": "1"})]
    token = TokenboxClient(url=proxy.url, token=tokenbox.superadmin_token).get_token(app, "github")
    assert token.access_token == f"{app}~gho"
    assert proxy.statuses == [503, 200]
    assert proxy.requests[1][2] - proxy.requests[0][2] >= 1.0


def test_retries_are_bounded_by_count(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    app = connected_app(tokenbox)
    proxy.inject = [Reply(503, UNAVAILABLE, {"Retry-After": "0"}) for _ in range(10)]
    client = TokenboxClient(url=proxy.url, token=tokenbox.superadmin_token, max_retries=2)
    with pytest.raises(ProviderUnavailable) as caught:
        client.get_token(app, "github")
    assert proxy.count == 3
    assert caught.value.message == UNAVAILABLE["message"]


def test_retries_are_bounded_by_time(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    """A Retry-After beyond the retry budget is not waited for: the error comes at once."""
    app = connected_app(tokenbox)
    proxy.inject = [Reply(503, UNAVAILABLE, {"Retry-After": "120"})]
    client = TokenboxClient(url=proxy.url, token=tokenbox.superadmin_token, retry_budget=5)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as caught:
        client.get_token(app, "github")
    assert time.monotonic() - started < 2
    assert caught.value.retry_after == 120
    assert proxy.count == 1


def test_a_bare_gateway_error_is_retried_with_backoff(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    app = connected_app(tokenbox)
    proxy.inject = [Reply(502, b"<html>Bad Gateway</html>"), Reply(503, b"upstream down")]
    token = TokenboxClient(url=proxy.url, token=tokenbox.superadmin_token).get_token(app, "github")
    assert token.access_token == f"{app}~gho"
    assert proxy.statuses == [502, 503, 200]


def test_a_bare_503_becomes_tokenbox_unavailable(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    proxy.inject = [Reply(503, b"no healthy upstream", {"Retry-After": "0"}) for _ in range(3)]
    client = TokenboxClient(url=proxy.url, token=tokenbox.superadmin_token, max_retries=1)
    with pytest.raises(TokenboxUnavailable) as caught:
        client.get_token("acme", "github")
    assert "no healthy upstream" in caught.value.message and caught.value.status == 503


def test_a_200_without_access_token_is_unexpected(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    proxy.inject = [Reply(200, {"hello": "world"})]
    with pytest.raises(UnexpectedResponse):
        TokenboxClient(url=proxy.url, token=tokenbox.superadmin_token).get_token("acme", "github")


def test_url_and_token_come_from_the_environment(tokenbox: Tokenbox, monkeypatch: pytest.MonkeyPatch) -> None:
    app = connected_app(tokenbox)
    monkeypatch.setenv("TOKENBOX_URL", tokenbox.url + "/")
    monkeypatch.setenv("TOKENBOX_TOKEN", tokenbox.superadmin_token)
    client = TokenboxClient()
    assert client.url == tokenbox.url
    assert client.get_token(app, "github").access_token == f"{app}~gho"
    assert tokenbox.superadmin_token not in repr(client)


def test_missing_token_is_a_clear_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="TOKENBOX_TOKEN"):
        TokenboxClient(url="http://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="http"):
        TokenboxClient(url="127.0.0.1:8080", token="x")
    with pytest.raises(ConfigurationError):
        TokenboxClient(url="http://127.0.0.1:1", token="x").get_token("acme", "github", min_validity=-1)


def test_retry_after_parsing() -> None:
    assert _retry_after({"Retry-After": "7"}) == 7.0
    assert _retry_after({}) is None
    assert _retry_after({"Retry-After": "soon"}) is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= (_retry_after({"Retry-After": in_a_minute}) or 0) <= 60
