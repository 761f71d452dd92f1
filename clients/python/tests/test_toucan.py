"""TokenboxSecretsKeeper with the real toucan-connectors (9.2.x) GithubConnector and the real
tokenbox server.

What toucan-connectors 9.2 does (toucan_connectors/oauth2_connector/oauth2connector.py):
``OAuth2Connector.get_access_token()`` loads the token dict, and when ``expires_at`` is a number
below ``time()`` it raises ``NoOAuth2RefreshToken`` if the dict has no ``refresh_token``, else
refreshes through authlib's ``OAuth2Session.refresh_token(token_url, ...)`` with the connector's
client credentials and ``save()``s the result; then it loads the dict again and returns its
``access_token``. ``get_access_data()`` always refreshes that way (and needs ``refresh_token``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from tokenbox_client import ConfigurationError, NotConnected, ReauthorizationRequired, TokenboxClient
from tokenbox_client.toucan import SaveNotSupported, TokenboxSecretsKeeper, make_retrieve_token

from fakes import ISSUE, CountingProxy, FakeProvider, Tokenbox, unique

toucan = pytest.importorskip(
    "toucan_connectors", reason="pip install 'toucan-connectors[base,github]==9.2.*'"
)

from toucan_connectors.github.github_connector import GithubConnector  # noqa: E402
from toucan_connectors.oauth2_connector import oauth2connector  # noqa: E402


class CountingKeeper(TokenboxSecretsKeeper):
    """Counts the library's calls to load()."""

    loads = 0

    def load(self, key: str, **kwargs: Any) -> dict[str, Any]:
        self.loads += 1
        return super().load(key, **kwargs)


@pytest.fixture
def refresh_spy(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Records every library-side refresh attempt (authlib's OAuth2Session.refresh_token)."""
    from authlib.integrations.requests_client import OAuth2Session

    calls: list[Any] = []
    real = OAuth2Session.refresh_token

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(OAuth2Session, "refresh_token", spy)
    return calls


def github_connector(app: str, keeper: TokenboxSecretsKeeper, provider: FakeProvider) -> GithubConnector:
    """A real GithubConnector holding client credentials, so that it *could* refresh by itself;
    its token URL points at a trap endpoint of the fake provider that counts any attempt."""
    connector = GithubConnector(
        name="github",
        auth_flow_id=f"{app}/github",
        secrets_keeper=keeper,
        client_id="toucan-client-id",
        client_secret="toucan-client-secret",
        redirect_uri="http://127.0.0.1:1/redirect",
    )
    connector._oauth2_connector.token_url = f"{provider.url}/library-token"
    return connector


def test_importing_the_client_does_not_import_toucan() -> None:
    code = (
        "import sys, tokenbox_client, tokenbox_client.toucan\n"
        "loaded = [m for m in sys.modules if m.startswith(('toucan_connectors', 'pydantic', 'pandas'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_get_access_token_returns_tokenboxs_token_with_one_request(
    tokenbox: Tokenbox, provider: FakeProvider, proxy: CountingProxy, refresh_spy: list[Any]
) -> None:
    app = unique("toucan")
    # An expiring GitHub App user token: tokenbox refreshes it (at the fake provider) first.
    provider.plan(f"{app}~rt0", ISSUE)
    tokenbox.connect(app, "github", access_token=f"{app}~at0", refresh_token=f"{app}~rt0", expires_in=120)
    keeper = CountingKeeper(url=proxy.url, token=tokenbox.superadmin_token)
    connector = github_connector(app, keeper, provider)

    access_token = connector.get_access_token()

    served = TokenboxClient(url=tokenbox.url, token=tokenbox.superadmin_token).get_token(app, "github")
    assert access_token == served.access_token
    assert access_token.startswith(f"{app}~at") and access_token != f"{app}~at0"  # refreshed by tokenbox
    assert keeper.loads == 2, "toucan-connectors loads the token twice per get_access_token()"
    assert proxy.count == 1, "... and the two loads cost one HTTP request"
    assert len(provider.refreshes(f"{app}~")) == 1  # tokenbox's refresh, at the provider
    assert provider.library_requests == [] and refresh_spy == []

    # Later calls are served from the client's cache while the token stays valid for 300 s.
    keeper._recent.clear()
    assert connector.get_access_token() == access_token
    assert proxy.count == 1


def test_load_returns_no_refresh_token_and_a_margined_expiry(
    tokenbox: Tokenbox, provider: FakeProvider
) -> None:
    app = unique("dict")
    tokenbox.connect(app, "github", access_token=f"{app}~at0", refresh_token=f"{app}~rt0", expires_in=3600)
    assert tokenbox.connection(app, "github")["has_refresh_token"] is True
    keeper = TokenboxSecretsKeeper(url=tokenbox.url, token=tokenbox.superadmin_token)
    value = keeper.load(f"{app}/github")
    assert set(value) == {"access_token", "expires_at"}
    assert value["access_token"] == f"{app}~at0"
    assert isinstance(value["expires_at"], int)
    # expires_at = local request time + expires_in - 60 s of margin
    assert time.time() + 3600 - 60 - 5 <= value["expires_at"] <= time.time() + 3600 - 60


def test_library_side_refresh_is_impossible(
    tokenbox: Tokenbox, provider: FakeProvider, refresh_spy: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = unique("norefresh")
    tokenbox.connect(app, "github", access_token=f"{app}~at0", refresh_token=f"{app}~rt0", expires_in=3600)
    keeper = TokenboxSecretsKeeper(url=tokenbox.url, token=tokenbox.superadmin_token)
    connector = github_connector(app, keeper, provider)
    inner = connector._oauth2_connector

    # 1. The library believes the token expired (its clock jumps a day ahead): it would refresh
    #    if the dict carried a refresh token. It has none, so the refresh branch cannot run.
    monkeypatch.setattr(oauth2connector, "time", lambda: time.time() + 86400)
    with pytest.raises(oauth2connector.NoOAuth2RefreshToken):
        connector.get_access_token()
    monkeypatch.undo()

    # 2. get_access_data() always refreshes by itself: refused the same way.
    with pytest.raises(oauth2connector.NoOAuth2RefreshToken):
        inner.get_access_data()

    # 3. Even a refresh token read through the connector's API is not there.
    with pytest.raises(KeyError):
        inner.get_refresh_token()

    # 4. Writing a token set (what a refresh or a code exchange ends with) is refused loudly.
    with pytest.raises(SaveNotSupported, match="tokenbox owns the tokens") as caught:
        keeper.save(
            f"{app}/github", {"access_token": "secret-at", "refresh_token": "secret-rt", "expires_at": 1}
        )
    assert caught.value.app_id == app and caught.value.connector_type == "github"
    assert "secret-" not in str(caught.value)  # values are never echoed
    # ... and so is the connector's own OAuth dance (it saves its state first).
    with pytest.raises(SaveNotSupported, match="authorization flow"):
        connector.build_authorization_url()

    assert provider.library_requests == [] and refresh_spy == []
    assert provider.refreshes(f"{app}~") == []
    assert connector.get_access_token() == f"{app}~at0"  # the connector still works


def test_token_without_expiry_has_no_expires_at(tokenbox: Tokenbox, provider: FakeProvider) -> None:
    app = unique("oauthapp")
    tokenbox.connect(app, "github", access_token=f"{app}~gho")  # GitHub OAuth App: never expires
    keeper = TokenboxSecretsKeeper(url=tokenbox.url, token=tokenbox.superadmin_token)
    assert keeper.load(f"{app}/github") == {"access_token": f"{app}~gho"}
    assert github_connector(app, keeper, provider).get_access_token() == f"{app}~gho"


def test_tokenbox_errors_reach_the_connector(tokenbox: Tokenbox, provider: FakeProvider) -> None:
    app = unique("gone")
    tokenbox.connect(app, "github", access_token=f"{app}~at0", expires_at=int(time.time()) - 10)
    keeper = TokenboxSecretsKeeper(url=tokenbox.url, token=tokenbox.superadmin_token)
    with pytest.raises(ReauthorizationRequired, match="reconnect"):
        github_connector(app, keeper, provider).get_access_token()
    with pytest.raises(NotConnected):
        github_connector(unique("never"), keeper, provider).get_access_token()


def test_keeper_from_environment_or_client_and_key_mapping(
    tokenbox: Tokenbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = unique("mapped")
    tokenbox.connect(app, "github", access_token=f"{app}~at0", expires_in=3600)
    monkeypatch.setenv("TOKENBOX_URL", tokenbox.url)
    monkeypatch.setenv("TOKENBOX_TOKEN", tokenbox.superadmin_token)
    assert TokenboxSecretsKeeper().load(f"{app}/github")["access_token"] == f"{app}~at0"

    client = TokenboxClient()
    by_mapping = TokenboxSecretsKeeper(client=client, key_map={"flow-123": (app, "github")})
    assert by_mapping.load("flow-123")["access_token"] == f"{app}~at0"
    assert by_mapping.load(f"{app}/github")["access_token"] == f"{app}~at0"  # default form still works
    by_callable = TokenboxSecretsKeeper(
        client=client, key_map=lambda key: (key.removeprefix("tb:"), "github")
    )
    assert by_callable.load(f"tb:{app}")["access_token"] == f"{app}~at0"
    by_type = TokenboxSecretsKeeper(client=client, connector_type="github")
    assert by_type.load(app)["access_token"] == f"{app}~at0"
    with pytest.raises(ConfigurationError, match="<app_id>/<connector_type>"):
        TokenboxSecretsKeeper(client=client).load("no-slash")
    with pytest.raises(ConfigurationError):
        TokenboxSecretsKeeper(client=client, url="http://x")
    with pytest.raises(ConfigurationError):
        TokenboxSecretsKeeper(client=client, min_validity=60, expiry_margin=60)


def test_keeper_is_a_toucan_secrets_keeper() -> None:
    keeper = TokenboxSecretsKeeper(url="http://127.0.0.1:1", token="x")
    assert isinstance(keeper, oauth2connector.SecretsKeeper)


def test_retrieve_token_for_google_sheets(tokenbox: Tokenbox) -> None:
    from toucan_connectors.google_sheets.google_sheets_connector import GoogleSheetsConnector

    app = unique("sheets")
    tokenbox.connect(app, "google", access_token=f"{app}~ya29", expires_in=3600)
    keeper = TokenboxSecretsKeeper(url=tokenbox.url, token=tokenbox.superadmin_token)
    connector = GoogleSheetsConnector(name="sheets", retrieve_token=keeper.retrieve_token, auth_id=app)
    assert connector._call_retrieve_token() == f"{app}~ya29"  # service "google-sheets" -> "google"

    standalone = make_retrieve_token(TokenboxClient(url=tokenbox.url, token=tokenbox.superadmin_token))
    assert standalone("google-sheets", app) == f"{app}~ya29"
    assert standalone("anything", f"{app}/google") == f"{app}~ya29"
