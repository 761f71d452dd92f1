"""The tokenbox HTTP client: ``GET /{app_id}/{connector_type}/binb-token`` with the standard
library only (urllib), bounded retries on 503 and an in-process token cache."""

from __future__ import annotations

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

from . import errors
from .errors import TokenboxError

__all__ = ["TokenboxClient", "TokenInfo", "DEFAULT_URL"]

#: response headers: http.client's message, or a plain mapping
Headers = Mapping[str, str] | Message

DEFAULT_URL = "http://127.0.0.1:8080"
USER_AGENT = "tokenbox-client-python/0.1.0"

log = logging.getLogger("tokenbox_client")


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
        *,
        timeout: float = 40.0,
        max_retries: int = 3,
        retry_budget: float = 60.0,
        cache_max_age: float = 300.0,
        default_min_validity: int = 60,
    ) -> None:
        resolved_url = url if url is not None else os.environ.get("TOKENBOX_URL") or DEFAULT_URL
        resolved_token = token if token is not None else os.environ.get("TOKENBOX_TOKEN")
        if not resolved_token:
            raise errors.ConfigurationError(
                "no tokenbox service-account token: pass token= or set TOKENBOX_TOKEN"
            )
        parsed = urllib.parse.urlsplit(resolved_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise errors.ConfigurationError(
                f"TOKENBOX_URL must be an http(s) URL such as {DEFAULT_URL}, got {resolved_url!r}"
            )
        if max_retries < 0 or retry_budget < 0 or timeout <= 0 or cache_max_age < 0:
            raise errors.ConfigurationError(
                "timeout must be positive; max_retries, retry_budget and cache_max_age must not be negative"
            )
        self.url = resolved_url.rstrip("/")
        self._token = resolved_token
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
        ``UnknownConnectorType``, ``Forbidden``, ``Unauthorized``, ``InvalidRequest``,
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
        path = (
            f"/{urllib.parse.quote(app_id, safe='')}/{urllib.parse.quote(connector_type, safe='')}/binb-token"
        )
        query = {"min_validity": str(int(min_validity))}
        if force_refresh:
            query["force_refresh"] = "true"
        url = f"{self.url}{path}?{urllib.parse.urlencode(query)}"

        budget_start = time.monotonic()
        attempt = 0
        while True:
            started_mono = time.monotonic()
            started_wall = time.time()
            try:
                status, headers, body = self._get(url)
            except _TransportError as exc:
                error: TokenboxError = errors.TokenboxUnavailable(
                    f"cannot reach tokenbox at {self.url}: {exc.reason}",
                    app_id=app_id,
                    connector_type=connector_type,
                )
                retryable = True
            else:
                if status == 200:
                    return (
                        _parse_token(body, headers, app_id, connector_type, started_wall),
                        started_mono,
                    )
                error, retryable = _parse_error(status, headers, body, app_id, connector_type)
            if not retryable or attempt >= self.max_retries:
                raise error
            wait = (
                error.retry_after
                if error.retry_after is not None
                else min(8.0, 0.5 * 2**attempt) * random.uniform(0.8, 1.2)
            )
            elapsed = time.monotonic() - budget_start
            if elapsed + wait > self.retry_budget:
                log.warning(
                    "tokenbox: %s for %s/%s; not retrying: waiting %.1f s would exceed the "
                    "retry budget of %.0f s",
                    error.code,
                    app_id,
                    connector_type,
                    wait,
                    self.retry_budget,
                )
                raise error
            attempt += 1
            log.warning(
                "tokenbox: %s for %s/%s; retry %d/%d in %.1f s",
                error.code,
                app_id,
                connector_type,
                attempt,
                self.max_retries,
                wait,
            )
            time.sleep(wait)

    def _get(self, url: str) -> tuple[int, Headers, bytes]:
        request = urllib.request.Request(
            url,
            method="GET",
            headers={
                "Authorization": f"Bearer {self._token}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
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
    )
