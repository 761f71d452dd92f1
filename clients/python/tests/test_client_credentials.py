"""Client credentials: the client obtains a JWT from ``POST /oauth/token`` (RFC 6749 §4.4),
reuses it, renews it before it expires, and renews it once when tokenbox refuses it. Against
the real server, through the counting proxy (which sees every ``/oauth/token`` request)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import tokenbox_client.client as client_module
from tokenbox_client import (
    ConfigurationError,
    Forbidden,
    InvalidClient,
    TokenboxClient,
    Unauthorized,
)

from fakes import CountingProxy, Reply, Tokenbox, unique

OAUTH = "/oauth/token"
TOKEN_ROUTE = "/binb-token"


def connected_app(tokenbox: Tokenbox) -> str:
    app = unique("cc")
    tokenbox.connect(app, "github", access_token=f"{app}~gho", expires_in=7200)
    return app


def cc_client(tokenbox: Tokenbox, url: str, **kwargs: Any) -> TokenboxClient:
    """A client with the superadmin's client credentials and no token cache (every
    ``get_token`` reaches tokenbox, so every call needs a valid JWT)."""
    kwargs.setdefault("cache_max_age", 0)
    return TokenboxClient(
        url=url, client_id=tokenbox.superadmin_name, client_secret=tokenbox.superadmin_token, **kwargs
    )


def claims_of(jwt: str) -> dict[str, Any]:
    """The JWT's claims, read without verification (PyJWT verifies them in test_jwt_interop)."""
    payload = jwt.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


@pytest.fixture
def short_proxy(short_jwt_tokenbox: Tokenbox) -> Iterator[CountingProxy]:
    counting = CountingProxy(short_jwt_tokenbox.url)
    yield counting
    counting.close()


def test_get_token_with_client_credentials_reuses_one_jwt(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    app = connected_app(tokenbox)
    client = cc_client(tokenbox, proxy.url)
    for _ in range(3):
        assert client.get_token(app, "github").access_token == f"{app}~gho"
    assert len(proxy.paths(OAUTH)) == 1
    assert len([p for p in proxy.paths() if TOKEN_ROUTE in p]) == 3
    assert set(proxy.statuses) == {200}
    jwt = client.access_token()
    assert len(proxy.paths(OAUTH)) == 1  # still the same JWT
    claims = claims_of(jwt)
    assert claims["sub"] == tokenbox.superadmin_name
    assert claims["role"] == "superadmin"
    assert claims["exp"] - claims["iat"] == 900
    # Neither the secret nor the JWT shows in the client's repr.
    assert tokenbox.superadmin_token not in repr(client)
    assert jwt not in repr(client)
    assert tokenbox.superadmin_name in repr(client)


class FrozenClock:
    """The client's ``time`` module with a monotonic clock that moves only when told to; the
    rest (wall clock, sleep) is the real module."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_the_jwt_is_renewed_before_it_expires(
    short_jwt_tokenbox: Tokenbox, short_proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JWTs of 100 s: renewed once less than half their lifetime is left (the 60 s margin is
    capped at half the lifetime: 50 s), so the server never sees an expired JWT. The client's
    clock is moved by hand; no test time passes."""
    clock = FrozenClock()
    monkeypatch.setattr(client_module, "time", clock)
    app = connected_app(short_jwt_tokenbox)
    client = cc_client(short_jwt_tokenbox, short_proxy.url)
    assert client.get_token(app, "github").access_token == f"{app}~gho"
    first_jwt = client.access_token()
    assert claims_of(first_jwt)["exp"] - claims_of(first_jwt)["iat"] == 100
    # Before the renewal point (50 s in): reused. With the uncapped 60 s margin it would be
    # renewed at 40 s already.
    clock.now += 49
    client.get_token(app, "github")
    assert len(short_proxy.paths(OAUTH)) == 1  # reused while fresh

    # Past the renewal point, before the expiry: renewed ahead of time.
    clock.now += 2
    assert client.get_token(app, "github").access_token == f"{app}~gho"
    assert len(short_proxy.paths(OAUTH)) == 2
    second_jwt = client.access_token()
    assert second_jwt != first_jwt
    assert len(short_proxy.paths(OAUTH)) == 2

    # Long after the second JWT's lifetime: a new one, still no refused request.
    clock.now += 150
    assert client.get_token(app, "github").access_token == f"{app}~gho"
    assert len(short_proxy.paths(OAUTH)) == 3
    assert 401 not in short_proxy.statuses
    assert set(short_proxy.statuses) == {200}


def test_a_refused_jwt_is_renewed_once_and_the_request_retried(
    tokenbox: Tokenbox, proxy: CountingProxy
) -> None:
    app = connected_app(tokenbox)
    client = cc_client(tokenbox, proxy.url)
    client.get_token(app, "github")
    first_jwt = client.access_token()
    proxy.reset()

    proxy.inject = [Reply(401, {"error": "unauthorized", "message": "unknown or expired token"})]
    assert client.get_token(app, "github").access_token == f"{app}~gho"
    assert [(p.split("?")[0].rsplit("/", 1)[-1], s) for p, s, _, _ in proxy.requests] == [
        ("binb-token", 401),
        ("token", 200),
        ("binb-token", 200),
    ]
    assert client.access_token() != first_jwt

    # Refused again after the renewal: the 401 is raised, not looped on.
    proxy.reset()
    proxy.inject = [Reply(401, {"error": "unauthorized", "message": "no"}) for _ in range(2)]
    with pytest.raises(Unauthorized) as caught:
        client.get_token(app, "github")
    assert caught.value.status == 401
    assert proxy.statuses == [401, 200, 401]
    assert len(proxy.paths(OAUTH)) == 1


def test_a_static_token_is_not_renewed_on_401(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    app = connected_app(tokenbox)
    proxy.inject = [Reply(401, {"error": "unauthorized", "message": "unknown token"})]
    with pytest.raises(Unauthorized):
        TokenboxClient(url=proxy.url, token=tokenbox.superadmin_token).get_token(app, "github")
    assert proxy.statuses == [401]


def test_wrong_secret_raises_invalid_client(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    app = connected_app(tokenbox)
    client = TokenboxClient(url=proxy.url, client_id=tokenbox.superadmin_name, client_secret="tbx_wrong")
    with pytest.raises(InvalidClient) as caught:
        client.get_token(app, "github")
    error = caught.value
    assert isinstance(error, Unauthorized)
    assert (error.code, error.status) == ("invalid_client", 401)
    assert "wrong secret" in error.message  # the server's error_description
    assert str(error).startswith("invalid_client: client credentials refused")
    assert proxy.paths() == [OAUTH]  # not retried, and no token request without a JWT

    # Another account's secret under this client id: refused too.
    other = TokenboxClient(
        url=tokenbox.url, client_id=tokenbox.superadmin_name, client_secret=tokenbox.admin_token
    )
    with pytest.raises(InvalidClient):
        other.access_token()


def test_unreachable_token_endpoint_is_retried(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    app = connected_app(tokenbox)
    proxy.post_inject = [
        Reply(503, {"error": "unavailable", "message": "database down"}, {"Retry-After": "0"})
    ]
    assert cc_client(tokenbox, proxy.url).get_token(app, "github").access_token == f"{app}~gho"
    assert proxy.statuses == [503, 200, 200]


def test_the_jwt_carries_the_accounts_role(tokenbox: Tokenbox) -> None:
    """An admin account's JWT works, with the admin role: token requests need superadmin."""
    app = connected_app(tokenbox)
    client = TokenboxClient(
        url=tokenbox.url, client_id=tokenbox.admin_name, client_secret=tokenbox.admin_token
    )
    assert claims_of(client.access_token())["role"] == "admin"
    with pytest.raises(Forbidden):
        client.get_token(app, "github")
    status, body = tokenbox.request("GET", f"/{app}/github/connection", token=client.access_token())
    assert status == 200, body


def test_concurrent_callers_share_one_jwt_request(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    """Eight threads, each for its own connection (so the per-connection lock does not
    serialize them), start together on a client without a JWT: one ``/oauth/token`` request."""
    apps = [connected_app(tokenbox) for _ in range(8)]
    client = cc_client(tokenbox, proxy.url)
    results: dict[str, str] = {}
    failures: list[BaseException] = []
    barrier = threading.Barrier(len(apps))

    def call(app: str) -> None:
        try:
            barrier.wait()
            results[app] = client.get_token(app, "github").access_token
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=call, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures
    assert results == {app: f"{app}~gho" for app in apps}
    assert len(proxy.paths(OAUTH)) == 1


def test_client_credentials_from_the_environment(
    tokenbox: Tokenbox, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = connected_app(tokenbox)
    monkeypatch.setenv("TOKENBOX_URL", proxy.url)
    monkeypatch.setenv("TOKENBOX_CLIENT_ID", tokenbox.superadmin_name)
    monkeypatch.setenv("TOKENBOX_CLIENT_SECRET", tokenbox.superadmin_token)
    client = TokenboxClient()
    assert client.client_id == tokenbox.superadmin_name
    assert client.get_token(app, "github").access_token == f"{app}~gho"
    assert len(proxy.paths(OAUTH)) == 1

    # A static token in the environment wins: no JWT.
    proxy.reset()
    monkeypatch.setenv("TOKENBOX_TOKEN", tokenbox.superadmin_token)
    client = TokenboxClient()
    assert client.client_id is None
    assert client.get_token(app, "github").access_token == f"{app}~gho"
    assert proxy.paths(OAUTH) == []


def test_client_credentials_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "http://127.0.0.1:1"
    with pytest.raises(ConfigurationError, match="not both"):
        TokenboxClient(url=url, token="t", client_id="jobs", client_secret="s")
    with pytest.raises(ConfigurationError, match="both a client id and a client secret"):
        TokenboxClient(url=url, client_id="jobs")
    monkeypatch.setenv("TOKENBOX_CLIENT_SECRET", "s")
    with pytest.raises(ConfigurationError, match="TOKENBOX_CLIENT_ID"):
        TokenboxClient(url=url)
    with pytest.raises(ConfigurationError, match="renew_margin"):
        TokenboxClient(url=url, client_id="jobs", client_secret="s", renew_margin=-1)


def test_client_id_and_secret_are_form_url_encoded(tokenbox: Tokenbox) -> None:
    """RFC 6749 §2.3.1: id and secret are form-url-encoded, then sent with HTTP Basic, so a
    ``:``, ``+`` or ``%`` in them survives (tokenbox decodes them the same way)."""
    client = TokenboxClient(url=tokenbox.url, client_id="jobs:1", client_secret="a:b+c%d e/é")
    assert client._jwt is not None
    basic = client._jwt._basic
    assert basic.startswith("Basic ")
    assert base64.b64decode(basic[6:]).decode() == "jobs%3A1:a%3Ab%2Bc%25d+e%2F%C3%A9"
    with pytest.raises(InvalidClient, match="wrong secret"):
        client.access_token()


def test_a_failed_early_renewal_keeps_the_valid_jwt(tokenbox: Tokenbox, proxy: CountingProxy) -> None:
    """A renewal due (forced here) while /oauth/token is unavailable: the current JWT, still
    valid for minutes, is used meanwhile; the next call renews it."""
    app = connected_app(tokenbox)
    client = cc_client(tokenbox, proxy.url)
    client.get_token(app, "github")
    first_jwt = client.access_token()
    assert client._jwt is not None
    client._jwt._renew_at = 0.0  # due for renewal
    proxy.reset()
    proxy.post_inject = [Reply(503, {"error": "unavailable", "message": "database down"})]
    assert client.get_token(app, "github").access_token == f"{app}~gho"
    assert proxy.statuses == [503, 200]
    assert client.access_token() != first_jwt  # renewed on the next call
    assert proxy.statuses == [503, 200, 200]
