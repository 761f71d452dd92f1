"""toucan-connectors integration: tokenbox as the connectors' ``SecretsKeeper``.

toucan-connectors' OAuth2 connectors (GitHub, OneDrive, Snowflake OAuth2, ...) read their token
through a ``SecretsKeeper`` (``save(key, value)`` / ``load(key)``, the key being the connector's
``auth_flow_id``). :class:`TokenboxSecretsKeeper` is a drop-in one that serves tokenbox's tokens:

    keeper = TokenboxSecretsKeeper()                      # TOKENBOX_URL / TOKENBOX_TOKEN
    connector = GithubConnector(name="gh", auth_flow_id="acme/github", secrets_keeper=keeper)
    connector.get_access_token()                          # a token tokenbox keeps fresh

What toucan-connectors does with it (9.2.x, ``OAuth2Connector.get_access_token``): it loads the
token dict, and if ``expires_at`` is a number below ``time()`` (no margin) it refreshes the token
*itself* when the dict has a ``refresh_token`` (``NoOAuth2RefreshToken`` otherwise), saves the
result, then loads the dict a second time. This keeper therefore:

* never returns a refresh token: the library's refresh branch cannot run (it raises
  ``NoOAuth2RefreshToken`` instead), so a rotating refresh token can never be spent behind
  tokenbox's back, and ``save()`` refuses every write;
* returns a token tokenbox guarantees valid for ``min_validity`` seconds (300), with an
  ``expires_at`` computed on this machine's clock (``request time + expires_in``, immune to
  skew between this host and tokenbox) minus ``expiry_margin`` (60 s): anyone who keeps the dict
  and compares it with the clock without a margin, as the library does, stops trusting the token
  a minute before the provider does. The margin is smaller than ``min_validity``, so a freshly
  loaded dict is never "expired" in the library's eyes;
* answers the two loads of one ``get_access_token()`` with one HTTP request: the client caches
  the token while it stays valid for ``min_validity``, and the keeper hands back the same dict for
  ``reuse_seconds`` after a load even in the corner case where the token was served with barely
  ``min_validity`` left.

Importing this module does not import toucan-connectors.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from .client import TokenboxClient, TokenInfo
from .errors import ConfigurationError, TokenboxError

__all__ = [
    "TokenboxSecretsKeeper",
    "SaveNotSupported",
    "make_retrieve_token",
    "parse_auth_flow_id",
    "DEFAULT_SERVICE_CONNECTOR_TYPES",
]

#: toucan's managed-OAuth service ids (``retrieve_token(service_id, auth_id)``) -> tokenbox types
DEFAULT_SERVICE_CONNECTOR_TYPES: Mapping[str, str] = {"google-sheets": "google"}

KeyMap = Callable[[str], tuple[str, str]] | Mapping[str, tuple[str, str]]


class SaveNotSupported(TokenboxError, NotImplementedError):
    """A connector tried to write to tokenbox through the secrets keeper: tokenbox owns the
    tokens (it obtains them through its connect links and refreshes them itself)."""

    code_name = "save_not_supported"


def parse_auth_flow_id(key: str) -> tuple[str, str]:
    """The default mapping: ``"<app_id>/<connector_type>"`` -> ``(app_id, connector_type)``."""
    app_id, sep, connector_type = key.partition("/")
    if not sep or not app_id or not connector_type or "/" in connector_type:
        raise ConfigurationError(
            f"auth_flow_id {key!r} does not name a tokenbox connection: expected "
            "'<app_id>/<connector_type>' (or give TokenboxSecretsKeeper a key_map)"
        )
    return app_id, connector_type


class TokenboxSecretsKeeper:
    """A read-only toucan-connectors ``SecretsKeeper`` backed by tokenbox.

    Build it with ``url``/``token`` (default: ``TOKENBOX_URL``/``TOKENBOX_TOKEN``), with
    ``url``/``client_id``/``client_secret`` (client credentials: see :class:`TokenboxClient`) or
    with a ready ``client``. ``key_map`` maps an ``auth_flow_id`` to ``(app_id, connector_type)``: a
    callable, or a mapping (keys it lacks fall back to the default ``"<app_id>/<connector_type>"``
    form); with ``connector_type`` set, a key without ``/`` is taken as the app id.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        client: TokenboxClient | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        key_map: KeyMap | None = None,
        connector_type: str | None = None,
        min_validity: int = 300,
        expiry_margin: int = 60,
        reuse_seconds: float = 5.0,
        service_connector_types: Mapping[str, str] | None = None,
    ) -> None:
        if client is not None and any(v is not None for v in (url, token, client_id, client_secret)):
            raise ConfigurationError(
                "give either client= or url=/token= (or client_id=/client_secret=), not both"
            )
        if min_validity <= 0 or expiry_margin < 0 or reuse_seconds < 0:
            raise ConfigurationError(
                "min_validity must be positive, expiry_margin and reuse_seconds not negative"
            )
        if expiry_margin + reuse_seconds >= min_validity:
            raise ConfigurationError(
                "expiry_margin + reuse_seconds must stay below min_validity, or a freshly loaded "
                "token could look expired to toucan-connectors"
            )
        self.client = (
            client
            if client is not None
            else TokenboxClient(url=url, token=token, client_id=client_id, client_secret=client_secret)
        )
        self.key_map = key_map
        self.connector_type = connector_type
        self.min_validity = min_validity
        self.expiry_margin = expiry_margin
        self.reuse_seconds = reuse_seconds
        self.service_connector_types = dict(
            DEFAULT_SERVICE_CONNECTOR_TYPES if service_connector_types is None else service_connector_types
        )
        self._recent: dict[str, tuple[float, dict[str, Any]]] = {}
        _register_with_toucan()

    def __repr__(self) -> str:
        return f"TokenboxSecretsKeeper(client={self.client!r})"

    # ------------------------------------------------------------- SecretsKeeper API

    def load(self, key: str, **kwargs: Any) -> dict[str, Any]:
        """The token dict of the connection ``key`` names: ``{"access_token", "expires_at"}``
        (``expires_at`` omitted when the token never expires), never a refresh token.

        Raises the client's exceptions (``ReauthorizationRequired``, ``NotConnected``, ...)."""
        recent = self._recent.get(key)
        if recent is not None and time.monotonic() - recent[0] <= self.reuse_seconds:
            return dict(recent[1])
        app_id, connector_type = self.connection_for(key)
        # The client shares one request among concurrent callers of one connection.
        token = self.client.get_token(app_id, connector_type, min_validity=self.min_validity)
        value = self._as_toucan_dict(token)
        self._recent[key] = (time.monotonic(), value)
        return dict(value)

    def save(self, key: str, value: Any, **kwargs: Any) -> NoReturn:
        """Always raises :class:`SaveNotSupported`: tokenbox owns the tokens."""
        app_id: str | None = None
        connector_type: str | None = None
        try:
            app_id, connector_type = self.connection_for(key)
            where = f"{app_id}/{connector_type}"
        except ConfigurationError:
            where = repr(key)
        if isinstance(value, Mapping) and "state" in value and "access_token" not in value:
            what = "the state of a connector-side OAuth authorization flow"
        elif isinstance(value, Mapping) and ("access_token" in value or "refresh_token" in value):
            what = "a token set (a connector-side code exchange or token refresh)"
        else:
            what = "a value"
        raise SaveNotSupported(
            f"tokenbox owns the tokens of {where}: the connector tried to save {what} for "
            f"auth_flow_id {key!r}, which TokenboxSecretsKeeper refuses. Connect the app through "
            "tokenbox (a connect link, or PUT /{app_id}/{connector_type}/connection) rather than "
            "through the connector's own OAuth flow; tokenbox refreshes tokens itself.",
            app_id=app_id,
            connector_type=connector_type,
        )

    # ------------------------------------------------------------- managed OAuth callable

    def retrieve_token(self, service_id: str, auth_id: str) -> str:
        """``retrieve_token(service_id, auth_id) -> access_token`` for connectors that take a
        token callback (Google Sheets: ``GoogleSheetsConnector(retrieve_token=keeper.
        retrieve_token, auth_id="<app_id>")``). ``auth_id`` is the app id, or
        ``"<app_id>/<connector_type>"``; otherwise the connector type is
        ``service_connector_types[service_id]`` (``google-sheets`` -> ``google``), else
        ``service_id`` itself."""
        if "/" in auth_id:
            app_id, connector_type = parse_auth_flow_id(auth_id)
        else:
            app_id = auth_id
            connector_type = self.service_connector_types.get(service_id, service_id)
        return self.client.get_token(app_id, connector_type, min_validity=self.min_validity).access_token

    def credential(self, key: str) -> TokenInfo:
        """The full credential of the connection ``key`` names, for connectors that are not
        OAuth2Connector (API keys, HTTP Basic, client credentials): ``.request_headers()`` are
        the headers to send, ``.query`` the query parameters, ``.api_base_url`` where to send
        them."""
        app_id, connector_type = self.connection_for(key)
        return self.client.get_token(app_id, connector_type, min_validity=self.min_validity)

    # ------------------------------------------------------------- helpers

    def connection_for(self, key: str) -> tuple[str, str]:
        """``(app_id, connector_type)`` for an ``auth_flow_id``."""
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"auth_flow_id must be a non-empty string, got {key!r}")
        if self.key_map is not None:
            if isinstance(self.key_map, Mapping):
                if key in self.key_map:
                    return self.key_map[key]
            else:
                return self.key_map(key)
        if self.connector_type is not None and "/" not in key:
            return key, self.connector_type
        return parse_auth_flow_id(key)

    def forget(self, key: str) -> None:
        """Drop what is cached for ``key`` (e.g. after the provider rejected the token; the
        next load then asks tokenbox again)."""
        self._recent.pop(key, None)
        try:
            app_id, connector_type = self.connection_for(key)
        except ConfigurationError:
            return
        self.client.invalidate(app_id, connector_type)

    def _as_toucan_dict(self, token: TokenInfo) -> dict[str, Any]:
        value: dict[str, Any] = {"access_token": token.access_token}
        expires = token.local_expires_at
        if expires is not None:
            value["expires_at"] = int(expires) - self.expiry_margin
        return value


def make_retrieve_token(
    client: TokenboxClient | None = None,
    *,
    min_validity: int = 300,
    service_connector_types: Mapping[str, str] | None = None,
) -> Callable[[str, str], str]:
    """A standalone ``retrieve_token(service_id, auth_id) -> str`` callable (see
    :meth:`TokenboxSecretsKeeper.retrieve_token`)."""
    keeper = TokenboxSecretsKeeper(
        client=client if client is not None else TokenboxClient(),
        min_validity=min_validity,
        reuse_seconds=0,
        expiry_margin=0,
        service_connector_types=service_connector_types,
    )
    return keeper.retrieve_token


_registered = False


def _register_with_toucan() -> None:
    """Make ``isinstance(keeper, toucan's SecretsKeeper)`` true when toucan-connectors is loaded,
    without importing it (it imports every connector, pandas included)."""
    global _registered
    if _registered:
        return
    module = sys.modules.get("toucan_connectors.oauth2_connector.oauth2connector")
    base = getattr(module, "SecretsKeeper", None) if module is not None else None
    register = getattr(base, "register", None)
    if register is not None:
        register(TokenboxSecretsKeeper)
        _registered = True
