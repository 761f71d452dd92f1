"""The tokenbox HTTP client: ``GET /{app_id}/{connector_type}/binb-token`` with the standard
library only (urllib), bounded retries on 503 and an in-process token cache. It authenticates
with a service account's static bearer token, or with client credentials: a JWT from
``POST /oauth/token`` (RFC 6749 §4.4), cached and renewed before it expires; or, with no
static secret at all, with a workload identity token read from a file (a Kubernetes projected
service-account token) and traded for the provider token by the token exchange (RFC 8693)."""

from __future__ import annotations

import base64
import binascii
import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, TypeVar

from . import errors
from .errors import TokenboxError
from .proxy import Proxy

__all__ = ["TokenboxClient", "TokenInfo", "DEFAULT_URL"]

#: response headers: http.client's message, or a plain mapping
Headers = Mapping[str, str] | Message

DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
USER_AGENT = "tokenbox-client-python/0.1.0"

log = logging.getLogger("tokenbox_client")

_T = TypeVar("_T")


@dataclass(frozen=True)
class TokenInfo:
    """A token served by tokenbox. ``repr()`` never shows the access token."""

    access_token: str = field(repr=False)
    #: expiry as epoch seconds on tokenbox's clock; ``None`` when the token never expires
    expires_at: int | None
    #: granted scope as the provider reported it; ``None`` when unknown
    scope: str | None
    #: connection metadata (``instance_url``, ``api_domain``, ...); empty when none
    metadata: Mapping[str, Any]
    app_id: str
    connector_type: str
    token_type: str = "Bearer"
    #: seconds of validity left when tokenbox answered; ``None`` when the token never expires
    expires_in: int | None = None
    #: epoch seconds on *this* machine's clock when the request that got the token was sent
    fetched_at: float = 0.0
    #: the exact HTTP headers to send to the provider's API, whatever the connection's kind
    #: (OAuth token, API key, Basic); ``repr()`` never shows them (they hold the credential)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: query parameters to add to every API request (an API key sent in the query)
    query: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: the provider's API base URL for this connection, when tokenbox's catalog knows it
    api_base_url: str | None = None

    @property
    def local_expires_at(self) -> float | None:
        """Expiry on this machine's clock (``fetched_at + expires_in``): immune to clock skew
        between this machine and tokenbox, and a little early (the request's latency)."""
        if self.expires_in is None:
            return None
        return self.fetched_at + self.expires_in

    def valid_for(self, seconds: float = 0.0, *, now: float | None = None) -> bool:
        """Whether the token stays valid at least ``seconds`` more (by ``local_expires_at``)."""
        expires = self.local_expires_at
        if expires is None:
            return True
        return expires - (time.time() if now is None else now) >= seconds

    @property
    def authorization_header(self) -> str:
        """The ``Authorization`` header value for the provider's API."""
        return f"{self.token_type or 'Bearer'} {self.access_token}"

    def request_headers(self) -> dict[str, str]:
        """The headers for the provider's API: tokenbox's ``headers``, or (from an older
        tokenbox that sends none) ``Authorization: <token_type> <access_token>``."""
        if self.headers or self.query:
            return dict(self.headers)
        return {"Authorization": self.authorization_header}


@dataclass
class _CacheEntry:
    token: TokenInfo
    fetched_monotonic: float
    #: monotonic deadline (request start + expires_in); None: never expires
    deadline: float | None


class TokenboxClient:
    """Client of tokenbox's token endpoint.

    ``url`` and ``token`` default to the ``TOKENBOX_URL`` and ``TOKENBOX_TOKEN`` environment
    variables (``TOKENBOX_URL`` itself defaults to ``http://127.0.0.1:8080``, like the CLI).
    The token must belong to a *superadmin* service account.

    Client credentials instead of a static token: ``client_id`` (the service account's name)
    and ``client_secret`` (its bearer token), or the ``TOKENBOX_CLIENT_ID`` and
    ``TOKENBOX_CLIENT_SECRET`` environment variables when neither ``token`` nor
    ``TOKENBOX_TOKEN`` is set. The client then sends a short-lived JWT obtained from
    ``POST /oauth/token`` (HTTP Basic authentication), reuses it, and renews it when less than
    ``max(renew_margin, 10 % of its lifetime)`` is left (at most half its lifetime). Renewals are
    serialized: concurrent callers wait for the one in progress. When tokenbox answers 401 to a
    JWT (e.g. its signing key was retired), the JWT is renewed once and the request retried.
    Refused credentials raise :class:`~tokenbox_client.errors.InvalidClient` (an
    ``Unauthorized``) with the server's description.

    A workload identity instead of a secret: ``workload_token_file`` (or the
    ``TOKENBOX_WORKLOAD_TOKEN_FILE`` environment variable when no other credential is given)
    names a file holding a JWT of an issuer tokenbox trusts (``[[trusted_issuers]]``), such as
    a Kubernetes projected service-account token with the audience ``tokenbox``. The file is
    read again for every request (the kubelet rotates it), and each token is obtained with the
    token exchange (``POST /oauth/token``, ``grant_type=urn:ietf:params:oauth:grant-type:
    token-exchange``, ``resource=tokenbox:connection:<app_id>/<connector_type>``). Errors are
    the same exceptions as with ``binb-token`` (tokenbox names its own code in the answer);
    a refused workload token raises ``Unauthorized``.

    Retries: a 503 (``provider_unavailable``, or tokenbox/its proxy unavailable), a gateway
    error without a tokenbox body and a connection failure are retried at most ``max_retries``
    times, waiting what ``Retry-After`` says (else an exponential back-off from 0.5 s), and
    never past ``retry_budget`` seconds in total: when the next wait would cross it, the error
    is raised at once with its ``retry_after``.

    Cache: a token is reused, without any request, while it stays valid for the requested
    ``min_validity`` (measured on this machine's monotonic clock from the moment the request
    was sent, so clock skew cannot make it look longer-lived), and for at most
    ``cache_max_age`` seconds (so a reconnection is seen). ``force_refresh=True`` bypasses it.
    ``cache_max_age=0`` disables it. Thread-safe: concurrent callers for one connection share
    one request.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        workload_token_file: str | os.PathLike[str] | None = None,
        timeout: float = 40.0,
        max_retries: int = 3,
        retry_budget: float = 60.0,
        cache_max_age: float = 300.0,
        default_min_validity: int = 60,
        renew_margin: float = 60.0,
    ) -> None:
        resolved_url = url if url is not None else os.environ.get("TOKENBOX_URL") or DEFAULT_URL
        resolved_token, credentials, workload_file = _resolve_credentials(
            token, client_id, client_secret, workload_token_file
        )
        parsed = urllib.parse.urlsplit(resolved_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise errors.ConfigurationError(
                f"TOKENBOX_URL must be an http(s) URL such as {DEFAULT_URL}, got {resolved_url!r}"
            )
        if max_retries < 0 or retry_budget < 0 or timeout <= 0 or cache_max_age < 0 or renew_margin < 0:
            raise errors.ConfigurationError(
                "timeout must be positive; max_retries, retry_budget, cache_max_age and "
                "renew_margin must not be negative"
            )
        self.url = resolved_url.rstrip("/")
        self._token = resolved_token
        #: the client id (service account name) when authenticating with client credentials
        self.client_id = credentials[0] if credentials else None
        self._jwt: _JwtSource | None = (
            _JwtSource(self, credentials[0], credentials[1], renew_margin) if credentials else None
        )
        #: the file holding the workload identity token, when the client uses the token exchange
        self.workload_token_file = workload_file
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_budget = retry_budget
        self.cache_max_age = cache_max_age
        self.default_min_validity = default_min_validity
        self._cache: dict[tuple[str, str], _CacheEntry] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self) -> str:
        if self.workload_token_file is not None:
            return f"TokenboxClient(url={self.url!r}, workload_token_file={str(self.workload_token_file)!r})"
        if self.client_id is not None:
            return f"TokenboxClient(url={self.url!r}, client_id={self.client_id!r})"
        return f"TokenboxClient(url={self.url!r})"

    # ------------------------------------------------------------------ public API

    def get_token(
        self,
        app_id: str,
        connector_type: str,
        min_validity: int | None = None,
        force_refresh: bool = False,
    ) -> TokenInfo:
        """A token for ``app_id``'s ``connector_type`` connection, valid for at least
        ``min_validity`` seconds.

        ``min_validity=None`` means the client's ``default_min_validity`` (60 s). tokenbox
        refreshes a token expiring within ``max(min_validity, its refresh margin)`` (300 s by
        default) and never serves one valid for less than ``min_validity``.
        ``force_refresh=True`` asks tokenbox for a new token (use it when the provider
        rejected the one you had).

        Raises a :class:`~tokenbox_client.errors.TokenboxError` subclass:
        ``ReauthorizationRequired`` (the tenant must reconnect), ``NotConnected``,
        ``UnknownConnectorType``, ``Forbidden``, ``Unauthorized`` (``InvalidClient`` when the
        client credentials are refused), ``InvalidRequest``,
        ``ProviderError``, ``ProviderUnavailable`` (after the retries), ``TokenboxUnavailable``,
        ``InternalError``, ``UnexpectedResponse``.
        """
        if not app_id or not connector_type:
            raise errors.ConfigurationError("app_id and connector_type must not be empty")
        if min_validity is not None and (isinstance(min_validity, bool) or min_validity < 0):
            raise errors.ConfigurationError("min_validity must be a non-negative number of seconds")
        key = (app_id, connector_type)
        wanted = self.default_min_validity if min_validity is None else min_validity
        with self._lock_for(key):
            if not force_refresh:
                hit = self._cached(key, wanted)
                if hit is not None:
                    return hit
            # Always explicit: without it tokenbox may serve, while the provider is down, a
            # stored token valid for a single second.
            token, started = self._fetch(app_id, connector_type, wanted, force_refresh)
            if self.cache_max_age > 0:
                deadline = None if token.expires_in is None else started + token.expires_in
                self._cache[key] = _CacheEntry(token, started, deadline)
            return token

    def invalidate(self, app_id: str, connector_type: str) -> None:
        """Forget the cached token of one connection."""
        self._cache.pop((app_id, connector_type), None)

    def clear_cache(self) -> None:
        """Forget every cached token."""
        self._cache.clear()

    def access_token(self) -> str:
        """The bearer token this client sends to tokenbox: the static token, or a JWT of the
        client-credentials grant that is not due for renewal (obtained or renewed now when
        needed, with the client's retries on 503 and connection failures; while tokenbox cannot
        renew it, the current JWT is returned as long as it stays valid for a few seconds).
        Also usable to call tokenbox's other routes with ``Authorization: Bearer ...``.
        With ``workload_token_file``: the workload token, read from the file now."""
        if self.workload_token_file is not None:
            return self._workload_token()
        if self._jwt is None:
            return self._token
        jwt = self._jwt
        return self._retrying(jwt.current, "the client-credentials grant")

    def proxy(self, app_id: str, connector_type: str) -> Proxy:
        """The provider's API of one connection through tokenbox's proxy mode (the job never
        holds the credential): ``client.proxy("acme", "hubspot").get("/crm/v3/...",
        params=...)`` returns a ``requests``-like response."""
        return Proxy(self, app_id, connector_type)

    # ------------------------------------------------------------------ internals

    def _lock_for(self, key: tuple[str, str]) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = threading.Lock()
            return lock

    def _cached(self, key: tuple[str, str], wanted: float) -> TokenInfo | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        now = time.monotonic()
        if now - entry.fetched_monotonic > self.cache_max_age:
            return None
        if entry.deadline is not None and entry.deadline - now < wanted:
            return None
        return entry.token

    def _fetch(
        self, app_id: str, connector_type: str, min_validity: int, force_refresh: bool
    ) -> tuple[TokenInfo, float]:
        if self.workload_token_file is not None:
            form = {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token_type": JWT_TOKEN_TYPE,
                "resource": f"tokenbox:connection:{app_id}/{connector_type}",
                "min_validity": str(int(min_validity)),
            }
            if force_refresh:
                form["force_refresh"] = "true"
            return self._retrying(
                lambda: self._exchange_once(form, app_id, connector_type), f"{app_id}/{connector_type}"
            )
        path = (
            f"/{urllib.parse.quote(app_id, safe='')}/{urllib.parse.quote(connector_type, safe='')}/binb-token"
        )
        query = {"min_validity": str(int(min_validity))}
        if force_refresh:
            query["force_refresh"] = "true"
        url = f"{self.url}{path}?{urllib.parse.urlencode(query)}"
        return self._retrying(
            lambda: self._fetch_once(url, app_id, connector_type), f"{app_id}/{connector_type}"
        )

    def _fetch_once(self, url: str, app_id: str, connector_type: str) -> tuple[TokenInfo, float]:
        """One attempt (two requests when a JWT is refused and renewed); raises ``_Retry`` for
        what is worth retrying."""
        renewed = False
        while True:
            bearer = self._token if self._jwt is None else self._jwt.current()
            started_mono = time.monotonic()
            started_wall = time.time()
            try:
                status, headers, body = self._send(url, bearer)
            except _TransportError as exc:
                raise self._unreachable(exc, app_id, connector_type) from None
            if status == 200:
                return (
                    _parse_token(body, headers, app_id, connector_type, started_wall),
                    started_mono,
                )
            if status == 401 and self._jwt is not None and not renewed:
                # The JWT was refused before its time (a retired signing key, a restored
                # database...): renew it once and try again.
                log.info("tokenbox refused the JWT (401); renewing it and retrying once")
                self._jwt.discard(bearer)
                renewed = True
                continue
            error, retryable = _parse_error(status, headers, body, app_id, connector_type)
            if retryable:
                raise _Retry(error)
            raise error

    def _workload_token(self) -> str:
        """The workload identity token, read from its file now (it is rotated in place)."""
        path = self.workload_token_file
        assert path is not None
        try:
            with open(path, encoding="utf-8") as file:
                token = file.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.ConfigurationError(f"cannot read the workload token file {path}: {exc}") from None
        if not token:
            raise errors.ConfigurationError(f"the workload token file {path} is empty")
        return token

    def _exchange_once(
        self, form: dict[str, str], app_id: str, connector_type: str
    ) -> tuple[TokenInfo, float]:
        """One token exchange with the workload token as it is in its file now; raises
        ``_Retry`` for what is worth retrying."""
        data = urllib.parse.urlencode({**form, "subject_token": self._workload_token()}).encode()
        started_mono = time.monotonic()
        started_wall = time.time()
        try:
            status, headers, body = self._send(
                f"{self.url}/oauth/token",
                None,
                data=data,
                extra_headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        except _TransportError as exc:
            raise self._unreachable(exc, app_id, connector_type) from None
        if status == 200:
            return _parse_token(body, headers, app_id, connector_type, started_wall), started_mono
        error, retryable = _parse_oauth_error(status, headers, body)
        error.app_id, error.connector_type = app_id, connector_type
        if retryable:
            raise _Retry(error)
        raise error

    def _retrying(self, attempt_once: Callable[[], _T], what: str) -> _T:
        """Runs ``attempt_once`` until it returns, raises a final error, or the retries (count
        and time budget) are spent; it raises ``_Retry`` for what is worth another try."""
        budget_start = time.monotonic()
        attempt = 0
        while True:
            try:
                return attempt_once()
            except _Retry as retry:
                error = retry.error
            if attempt >= self.max_retries:
                raise error
            wait = (
                error.retry_after
                if error.retry_after is not None
                else min(8.0, 0.5 * 2**attempt) * random.uniform(0.8, 1.2)
            )
            elapsed = time.monotonic() - budget_start
            if elapsed + wait > self.retry_budget:
                log.warning(
                    "tokenbox: %s for %s; not retrying: waiting %.1f s would exceed the "
                    "retry budget of %.0f s",
                    error.code,
                    what,
                    wait,
                    self.retry_budget,
                )
                raise error
            attempt += 1
            log.warning(
                "tokenbox: %s for %s; retry %d/%d in %.1f s",
                error.code,
                what,
                attempt,
                self.max_retries,
                wait,
            )
            time.sleep(wait)

    def _unreachable(self, exc: _TransportError, app_id: str, connector_type: str) -> _Retry:
        """The retryable error of a request that did not reach tokenbox."""
        return _Retry(
            errors.TokenboxUnavailable(
                f"cannot reach tokenbox at {self.url}: {exc.reason}",
                app_id=app_id,
                connector_type=connector_type,
            )
        )

    def _send(
        self,
        url: str,
        bearer: str | None,
        *,
        data: bytes | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Headers, bytes]:
        """One HTTP request (GET, or POST when ``data`` is given); any HTTP status is returned,
        a transport failure raises ``_TransportError``."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        headers.update(extra_headers or {})
        request = urllib.request.Request(
            url, data=data, method="GET" if data is None else "POST", headers=headers
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    body = exc.read()
                except (OSError, http.client.HTTPException) as read_error:  # pragma: no cover
                    raise _TransportError(str(read_error)) from read_error
                return exc.code, exc.headers, body
        except urllib.error.URLError as exc:
            raise _TransportError(str(exc.reason)) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise _TransportError(str(exc) or type(exc).__name__) from exc


class _JwtSource:
    """The client-credentials grant: one cached JWT, renewed ahead of its expiry, one renewal
    at a time (callers needing a renewal wait for the one in progress)."""

    #: a JWT still valid this long is used when its early renewal fails transiently
    _GRACE_SECONDS = 5.0

    def __init__(self, client: TokenboxClient, client_id: str, client_secret: str, margin: float) -> None:
        self._client = client
        self._client_id = client_id
        self._margin = margin
        # RFC 6749 §2.3.1: id and secret form-url-encoded, then HTTP Basic.
        pair = (
            f"{urllib.parse.quote_plus(client_id, safe='')}:{urllib.parse.quote_plus(client_secret, safe='')}"
        )
        self._basic = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        self._lock = threading.Lock()
        self._jwt: str | None = None
        #: monotonic time of the request that obtained it + expires_in
        self._deadline = 0.0
        #: monotonic time from which it is renewed
        self._renew_at = 0.0
        #: number of JWTs obtained (for logs and tests)
        self.issued = 0

    def current(self) -> str:
        """A JWT that is not due for renewal (raises ``_Retry`` or a final error)."""
        with self._lock:
            now = time.monotonic()
            if self._jwt is not None and now < self._renew_at:
                return self._jwt
            try:
                return self._obtain()
            except _Retry:
                if self._jwt is not None and self._deadline - now >= self._GRACE_SECONDS:
                    log.warning("tokenbox: cannot renew the JWT yet; using the current one meanwhile")
                    return self._jwt
                raise

    def discard(self, jwt: str) -> None:
        """Forget ``jwt`` (tokenbox refused it) unless it was already replaced."""
        with self._lock:
            if self._jwt == jwt:
                self._jwt = None

    def _obtain(self) -> str:
        client = self._client
        started = time.monotonic()
        try:
            status, headers, body = client._send(
                f"{client.url}/oauth/token",
                None,
                data=b"grant_type=client_credentials",
                extra_headers={
                    "Authorization": self._basic,
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            )
        except _TransportError as exc:
            raise _Retry(
                errors.TokenboxUnavailable(f"cannot reach tokenbox at {client.url}: {exc.reason}")
            ) from None
        if status != 200:
            error, retryable = _parse_oauth_error(status, headers, body)
            if retryable:
                raise _Retry(error)
            raise error
        payload = _json_object(body)
        jwt = payload.get("access_token") if payload else None
        if payload is None or not isinstance(jwt, str) or not jwt:
            raise errors.UnexpectedResponse(
                "POST /oauth/token answered 200 without an access_token",
                status=200,
                request_id=headers.get("X-Request-Id"),
            )
        lifetime = _jwt_lifetime(payload.get("expires_in"), jwt)
        if lifetime is None:
            raise errors.UnexpectedResponse(
                "POST /oauth/token answered 200 without expires_in (nor a JWT with exp and iat)",
                status=200,
                request_id=headers.get("X-Request-Id"),
            )
        margin = min(max(self._margin, 0.1 * lifetime), 0.5 * lifetime)
        self._jwt = jwt
        self._deadline = started + lifetime
        self._renew_at = self._deadline - margin
        self.issued += 1
        log.debug(
            "tokenbox: JWT obtained for client %s, valid %.0f s, renewed in %.0f s",
            self._client_id,
            lifetime,
            lifetime - margin,
        )
        return jwt


class _Retry(Exception):
    """An error worth another attempt (within the client's retry policy)."""

    def __init__(self, error: TokenboxError) -> None:
        super().__init__(str(error))
        self.error = error


class _TransportError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: the request carries a bearer token."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _retry_after(headers: Headers) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _parse_error(
    status: int, headers: Headers, body: bytes, app_id: str, connector_type: str
) -> tuple[TokenboxError, bool]:
    payload = _json_object(body)
    code = payload.get("error") if payload else None
    message = payload.get("message") if payload else None
    is_tokenbox_error = isinstance(code, str)
    if not isinstance(code, str):
        code = None
    if not isinstance(message, str) or not message:
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = f"tokenbox answered HTTP {status}" + (f": {snippet}" if snippet else "")
    cls = errors.error_class_for(code, status)
    error = cls(
        message,
        code=code,
        status=status,
        retry_after=_retry_after(headers),
        request_id=headers.get("X-Request-Id"),
        app_id=app_id,
        connector_type=connector_type,
    )
    # 503 is always worth another try; a bare 502/504 comes from a proxy in front of tokenbox
    # (a 502 with tokenbox's own provider_error body is an operator problem: not retried).
    retryable = status == 503 or (status in (502, 504) and not is_tokenbox_error)
    return error, retryable


def _parse_token(
    body: bytes,
    headers: Headers,
    app_id: str,
    connector_type: str,
    fetched_at: float,
) -> TokenInfo:
    payload = _json_object(body)
    access_token = payload.get("access_token") if payload else None
    if payload is None or not isinstance(access_token, str) or not access_token:
        raise errors.UnexpectedResponse(
            "tokenbox answered 200 without an access_token",
            status=200,
            request_id=headers.get("X-Request-Id"),
            app_id=app_id,
            connector_type=connector_type,
        )

    def opt_int(name: str) -> int | None:
        value = payload.get(name)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    expires_at = opt_int("expires_at")
    expires_in = opt_int("expires_in")
    if expires_in is None and expires_at is not None:
        expires_in = max(0, expires_at - int(fetched_at))
    scope = payload.get("scope")
    metadata = payload.get("metadata")
    token_type = payload.get("token_type")

    def str_map(name: str) -> dict[str, str]:
        value = payload.get(name)
        if not isinstance(value, dict):
            return {}
        return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}

    api_base_url = payload.get("api_base_url")
    return TokenInfo(
        access_token=access_token,
        expires_at=expires_at,
        scope=scope if isinstance(scope, str) else None,
        metadata=dict(metadata) if isinstance(metadata, dict) else {},
        app_id=str(payload.get("app_id") or app_id),
        connector_type=str(payload.get("connector_type") or connector_type),
        token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        expires_in=expires_in,
        fetched_at=fetched_at,
        headers=str_map("headers"),
        query=str_map("query"),
        api_base_url=api_base_url if isinstance(api_base_url, str) else None,
    )


def _resolve_credentials(
    token: str | None,
    client_id: str | None,
    client_secret: str | None,
    workload_token_file: str | os.PathLike[str] | None = None,
) -> tuple[str, tuple[str, str] | None, str | os.PathLike[str] | None]:
    """The static token, or ``("", (client_id, client_secret), None)``, or ``("", None,
    workload_token_file)``, from the arguments or else the environment (``TOKENBOX_TOKEN``
    first, then ``TOKENBOX_CLIENT_ID``/``_SECRET``, then ``TOKENBOX_WORKLOAD_TOKEN_FILE``)."""
    given = [
        name
        for name, value in (
            ("token=", token),
            ("client_id=/client_secret=", client_id if client_id is not None else client_secret),
            ("workload_token_file=", workload_token_file),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise errors.ConfigurationError(f"give one kind of credential, not both: {' and '.join(given)}")
    if workload_token_file is not None:
        if not str(workload_token_file):
            raise errors.ConfigurationError("workload_token_file is empty")
        return "", None, workload_token_file
    if not given:
        token = os.environ.get("TOKENBOX_TOKEN") or None
        if token is None:
            client_id = os.environ.get("TOKENBOX_CLIENT_ID") or None
            client_secret = os.environ.get("TOKENBOX_CLIENT_SECRET") or None
            if client_id is None and client_secret is None:
                workload_file = os.environ.get("TOKENBOX_WORKLOAD_TOKEN_FILE") or None
                if workload_file is not None:
                    return "", None, workload_file
    if token is not None:
        if not token:
            raise errors.ConfigurationError("the tokenbox service-account token is empty")
        return token, None, None
    if client_id and client_secret:
        return "", (client_id, client_secret), None
    if client_id or client_secret:
        raise errors.ConfigurationError(
            "client credentials need both a client id and a client secret "
            "(client_id=/client_secret= or TOKENBOX_CLIENT_ID/TOKENBOX_CLIENT_SECRET)"
        )
    raise errors.ConfigurationError(
        "no tokenbox credentials: pass token= or set TOKENBOX_TOKEN (a service-account token), "
        "or pass client_id=/client_secret= or set TOKENBOX_CLIENT_ID/TOKENBOX_CLIENT_SECRET, "
        "or pass workload_token_file= or set TOKENBOX_WORKLOAD_TOKEN_FILE"
    )


def _parse_oauth_error(status: int, headers: Headers, body: bytes) -> tuple[TokenboxError, bool]:
    """An error of ``POST /oauth/token``: RFC 6749 §5.2 (``error``, ``error_description``), or
    tokenbox's usual shape for a server-side failure. The token exchange names tokenbox's own
    code (``binb-token``'s) as ``tokenbox_error``: that one picks the exception."""
    payload = _json_object(body)
    code = payload.get("error") if payload else None
    own = payload.get("tokenbox_error") if payload else None
    if isinstance(own, str) and own:
        code = own
    description = None
    if payload:
        for name in ("error_description", "message"):
            value = payload.get(name)
            if isinstance(value, str) and value:
                description = value
                break
    is_tokenbox_error = isinstance(code, str)
    if not isinstance(code, str):
        code = None
    if description is None:
        snippet = body[:200].decode("utf-8", "replace").strip()
        description = f"POST /oauth/token answered HTTP {status}" + (f": {snippet}" if snippet else "")
    if code == "invalid_client":
        description = f"client credentials refused: {description}"
    cls = errors.error_class_for(code, status)
    error = cls(
        description,
        code=code,
        status=status,
        retry_after=_retry_after(headers),
        request_id=headers.get("X-Request-Id"),
    )
    retryable = status == 503 or (status in (502, 504) and not is_tokenbox_error)
    return error, retryable


def _jwt_lifetime(expires_in: Any, jwt: str) -> float | None:
    """Seconds the JWT is valid for: ``expires_in``, else its ``exp - iat`` (read, not verified:
    only to schedule the renewal)."""
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in >= 0:
        return float(expires_in)
    parts = jwt.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    exp, iat = claims.get("exp"), claims.get("iat")
    if isinstance(exp, int | float) and isinstance(iat, int | float) and exp >= iat:
        return float(exp - iat)
    return None
