"""TokenboxClient against the real tokenbox server and a fake provider."""

from __future__ import annotations

import time

import pytest

from tokenbox_client import (
    Forbidden,
    InvalidRequest,
    NotConnected,
    ProviderError,
    ProviderUnavailable,
    ReauthorizationRequired,
    TokenboxClient,
    TokenboxUnavailable,
    Unauthorized,
    UnknownConnectorType,
)

from fakes import (
    INVALID_CLIENT,
    INVALID_GRANT,
    ISSUE,
    CountingProxy,
    FakeProvider,
    Reply,
    Tokenbox,
    down,
    unique,
)


def client_for(url: str, token: str, **kwargs: object) -> TokenboxClient:
    return TokenboxClient(url=url, token=token, **kwargs)  # type: ignore[arg-type]


def test_serves_the_imported_token_with_its_fields(tokenbox: Tokenbox) -> None:
    app = unique("served")
    expires_at = int(time.time()) + 3600
    tokenbox.connect(
        app,
        "acme",
        access_token=f"{app}~at0",
        refresh_token=f"{app}~rt0",
        expires_at=expires_at,
        scope="read write",
        metadata={"instance_url": "https://x.example"},
    )
    token = client_for(tokenbox.url, tokenbox.superadmin_token).get_token(app, "acme")
    assert token.access_token == f"{app}~at0"
    assert token.expires_at == expires_at
    assert 3500 <= (token.expires_in or 0) <= 3600
    assert token.scope == "read write"
    assert token.metadata == {"instance_url": "https://x.example"}
    assert (token.app_id, token.connector_type, token.token_type) == (app, "acme", "Bearer")
    assert token.authorization_header == f"Bearer {app}~at0"
    assert token.valid_for(3000)
    assert f"{app}~at0" not in repr(token)  # never in logs


def test_token_without_expiry_scope_or_metadata(tokenbox: Tokenbox) -> None:
    app = unique("forever")
    tokenbox.connect(app, "github", access_token=f"{app}~gho")
    token = client_for(tokenbox.url, tokenbox.superadmin_token).get_token(app, "github", min_validity=86400)
    assert token.access_token == f"{app}~gho"
    assert token.expires_at is None and token.expires_in is None
    assert token.scope is None
    assert token.metadata == {}
    assert token.valid_for(10**9)


def test_refresh_on_expiry_is_seen_by_the_client(tokenbox: Tokenbox, provider: FakeProvider) -> None:
    """A token expiring within tokenbox's margin is refreshed by tokenbox before it is served."""
    app = unique("expiring")
    provider.plan(f"{app}~rt0", ISSUE)
    tokenbox.connect(app, "acme", access_token=f"{app}~at0", refresh_token=f"{app}~rt0", expires_in=100)
    token = client_for(tokenbox.url, tokenbox.superadmin_token).get_token(app, "acme")
    assert token.access_token.startswith(f"{app}~at") and token.access_token != f"{app}~at0"
    assert 3500 <= (token.expires_in or 0) <= 3600
    [refresh] = provider.refreshes(f"{app}~")
    assert refresh["form"]["grant_type"] == "refresh_token"
    assert refresh["form"]["refresh_token"] == f"{app}~rt0"
    assert refresh["basic"] and refresh["client_id"] == "acme-client"


def test_cache_reuses_a_token_while_valid_for_min_validity(
    tokenbox: Tokenbox, provider: FakeProvider, proxy: CountingProxy
) -> None:
    app = unique("cached")
    provider.plan(f"{app}~rt0", ISSUE)
    tokenbox.connect(app, "acme", access_token=f"{app}~at0", refresh_token=f"{app}~rt0", expires_in=900)
    client = client_for(proxy.url, tokenbox.superadmin_token)

    first = client.get_token(app, "acme", min_validity=600)
    again = client.get_token(app, "acme", min_validity=600)
    assert first.access_token == again.access_token == f"{app}~at0"
    assert proxy.count == 1, "the second call is served from the in-process cache"
    assert provider.refreshes(f"{app}~") == []

    # 900 s left do not cover 1200 s: the client asks again and tokenbox refreshes.
    longer = client.get_token(app, "acme", min_validity=1200)
    assert proxy.count == 2
    assert longer.access_token != f"{app}~at0"
    assert len(provider.refreshes(f"{app}~")) == 1
    # ... and the new token is cached in turn.
    assert client.get_token(app, "acme", min_validity=1200).access_token == longer.access_token
    assert proxy.count == 2


def test_force_refresh_bypasses_the_cache(
    tokenbox: Tokenbox, provider: FakeProvider, proxy: CountingProxy
) -> None:
    app = unique("forced")
    provider.plan(f"{app}~rt0", ISSUE)
    tokenbox.connect(app, "acme", access_token=f"{app}~at0", refresh_token=f"{app}~rt0", expires_in=3600)
    client = client_for(proxy.url, tokenbox.superadmin_token)
    assert client.get_token(app, "acme").access_token == f"{app}~at0"
    forced = client.get_token(app, "acme", force_refresh=True)
    assert forced.access_token != f"{app}~at0"
    assert "min_validity=60" in proxy.requests[0][0], "the client's default min_validity is sent"
    assert proxy.count == 2 and "force_refresh=true" in proxy.requests[1][0]
    assert client.get_token(app, "acme").access_token == forced.access_token
    assert proxy.count == 2


# ------------------------------------------------------------------------------ errors


def test_not_connected(tokenbox: Tokenbox) -> None:
    app = unique("nobody")
    with pytest.raises(NotConnected) as caught:
        client_for(tokenbox.url, tokenbox.superadmin_token).get_token(app, "acme")
    assert caught.value.status == 404 and caught.value.code == "not_connected"
    assert app in caught.value.message
    assert caught.value.request_id


def test_unknown_connector_type(tokenbox: Tokenbox) -> None:
    with pytest.raises(UnknownConnectorType) as caught:
        client_for(tokenbox.url, tokenbox.superadmin_token).get_token(unique("x"), "nosuchprovider")
    assert caught.value.status == 404
    assert "nosuchprovider" in caught.value.message


def test_forbidden_for_an_admin_account(tokenbox: Tokenbox) -> None:
    app = unique("admin")
    tokenbox.connect(app, "github", access_token="x")
    with pytest.raises(Forbidden) as caught:
        client_for(tokenbox.url, tokenbox.admin_token).get_token(app, "github")
    assert caught.value.status == 403 and caught.value.message


def test_unauthorized_with_an_unknown_token(tokenbox: Tokenbox) -> None:
    with pytest.raises(Unauthorized) as caught:
        client_for(tokenbox.url, "not-a-real-token").get_token("acme", "github")
    assert caught.value.status == 401 and "Bearer" in caught.value.message


def test_invalid_request(tokenbox: Tokenbox) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client_for(tokenbox.url, tokenbox.superadmin_token).get_token("Not Valid/..", "github")
    assert caught.value.status == 400 and caught.value.code == "invalid_request"


def test_reauthorization_required_when_the_grant_is_revoked(
    tokenbox: Tokenbox, provider: FakeProvider
) -> None:
    app = unique("revoked")
    provider.plan(f"{app}~rt0", INVALID_GRANT)
    tokenbox.connect(
        app, "acme", access_token=f"{app}~at0", refresh_token=f"{app}~rt0", expires_at=int(time.time()) - 60
    )
    client = client_for(tokenbox.url, tokenbox.superadmin_token)
    with pytest.raises(ReauthorizationRequired) as caught:
        client.get_token(app, "acme")
    assert caught.value.status == 409 and "reconnect" in caught.value.message
    # Not retried, and tokenbox makes no further provider call for that connection.
    with pytest.raises(ReauthorizationRequired):
        client.get_token(app, "acme")
    assert len(provider.refreshes(f"{app}~")) == 1


def test_reauthorization_required_when_expired_without_refresh_token(tokenbox: Tokenbox) -> None:
    app = unique("norefresh")
    tokenbox.connect(app, "acme", access_token=f"{app}~at0", expires_at=int(time.time()) - 60)
    with pytest.raises(ReauthorizationRequired) as caught:
        client_for(tokenbox.url, tokenbox.superadmin_token).get_token(app, "acme")
    assert "no refresh token" in caught.value.message


def test_provider_error_is_not_retried(
    tokenbox: Tokenbox, provider: FakeProvider, proxy: CountingProxy
) -> None:
    app = unique("badclient")
    provider.plan(f"{app}~rt0", INVALID_CLIENT)
    tokenbox.connect(
        app, "acme", access_token=f"{app}~at0", refresh_token=f"{app}~rt0", expires_at=int(time.time()) - 60
    )
    with pytest.raises(ProviderError) as caught:
        client_for(proxy.url, tokenbox.superadmin_token).get_token(app, "acme")
    assert caught.value.status == 502 and "invalid_client" in caught.value.message
    assert proxy.count == 1


def test_provider_unavailable_after_bounded_retries(
    tokenbox: Tokenbox, provider: FakeProvider, proxy: CountingProxy
) -> None:
    app = unique("down")
    provider.plan(f"{app}~rt0", down(retry_after=1))
    tokenbox.connect(
        app, "downco", access_token=f"{app}~at0", refresh_token=f"{app}~rt0", expires_at=int(time.time()) - 60
    )
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as caught:
        client_for(proxy.url, tokenbox.superadmin_token, max_retries=1).get_token(app, "downco")
    assert caught.value.status == 503 and "unavailable" in caught.value.message
    assert proxy.statuses == [503, 503], "one retry, then the error"
    first_retry_after = proxy.requests[0][3]
    assert first_retry_after is not None and first_retry_after >= 1
    waited = proxy.requests[1][2] - proxy.requests[0][2]
    assert waited >= first_retry_after, "the retry honoured Retry-After"
    assert caught.value.retry_after == proxy.requests[1][3]
    assert time.monotonic() - started < 30


def test_503_from_the_real_server_is_retried_until_the_provider_is_back(
    tokenbox: Tokenbox, provider: FakeProvider, proxy: CountingProxy
) -> None:
    """The provider is down until the client has received one 503 from tokenbox, then back."""
    app = unique("flaky")
    back = {"up": False}

    def token_endpoint() -> Reply | str:
        return ISSUE if back["up"] else down(retry_after=1)

    def on_reply(status: int) -> None:
        if status == 503:
            back["up"] = True

    provider.plan(f"{app}~rt0", token_endpoint)
    proxy.on_reply = on_reply
    tokenbox.connect(
        app, "flaky", access_token=f"{app}~at0", refresh_token=f"{app}~rt0", expires_at=int(time.time()) - 60
    )
    token = client_for(proxy.url, tokenbox.superadmin_token, max_retries=3).get_token(app, "flaky")
    assert token.access_token.startswith(f"{app}~at") and token.access_token != f"{app}~at0"
    assert proxy.statuses == [503, 200]
    retry_after = proxy.requests[0][3]
    assert retry_after is not None
    assert proxy.requests[1][2] - proxy.requests[0][2] >= retry_after, "the retry honoured Retry-After"


def test_tokenbox_unreachable(tokenbox: Tokenbox) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = client_for(f"http://127.0.0.1:{port}", "x", max_retries=1)
    with pytest.raises(TokenboxUnavailable) as caught:
        client.get_token("acme", "github")
    assert caught.value.status is None and f"127.0.0.1:{port}" in caught.value.message
