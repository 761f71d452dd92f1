"""Exceptions raised by the tokenbox client, one per tokenbox error code.

Every tokenbox error response is JSON ``{"error": "<code>", "message": "<sentence>"}`` (the
OAuth token endpoint's follow RFC 6749 §5.2: ``{"error", "error_description"}``, and those of
the token exchange name tokenbox's own code, when there is one, as ``tokenbox_error``: a
workload then gets the same exception as with ``binb-token``); the
exception carries both, plus the HTTP status, the ``Retry-After`` delay when there is one and
the ``X-Request-Id`` to quote in a support request. ``str(exc)`` is ``"<code>: <message>"``.
"""

from __future__ import annotations

__all__ = [
    "TokenboxError",
    "ConfigurationError",
    "InvalidRequest",
    "Unauthorized",
    "InvalidClient",
    "InvalidGrant",
    "Forbidden",
    "InvalidTarget",
    "UnknownConnectorType",
    "NotConnected",
    "NotFound",
    "ConnectorNotConfigured",
    "ReauthorizationRequired",
    "ProviderError",
    "ProviderUnavailable",
    "TokenboxUnavailable",
    "InternalError",
    "UnexpectedResponse",
    "error_class_for",
]


class TokenboxError(Exception):
    """Base class of every error the client raises about a token request."""

    #: the tokenbox error code this class stands for (``None``: several or none)
    code_name: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
        app_id: str | None = None,
        connector_type: str | None = None,
    ) -> None:
        super().__init__(message)
        #: the server's human sentence (or the client's, when no server answered)
        self.message = message
        #: the stable error code (``"reauthorization_required"``, ...), when a server gave one
        self.code = code if code is not None else self.code_name
        #: the HTTP status, ``None`` when no HTTP answer was received
        self.status = status
        #: seconds the server asked to wait before retrying (``Retry-After``), if any
        self.retry_after = retry_after
        #: the server's ``X-Request-Id``, to find the request in tokenbox's log
        self.request_id = request_id
        self.app_id = app_id
        self.connector_type = connector_type

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, message={self.message!r})"


class ConfigurationError(TokenboxError, ValueError):
    """The client is missing its URL or token, or was given a malformed argument."""

    code_name = "configuration_error"


class InvalidRequest(TokenboxError, ValueError):
    """400 ``invalid_request``: malformed app id or connector type, bad ``min_validity``."""

    code_name = "invalid_request"


class Unauthorized(TokenboxError):
    """401 ``unauthorized``: no or unknown service-account token."""

    code_name = "unauthorized"


class InvalidClient(Unauthorized):
    """401 ``invalid_client`` from ``POST /oauth/token``: the client credentials were refused
    (unknown client id, wrong secret, or an expired or deleted service account). ``message`` is
    the server's ``error_description``. Retrying will not help."""

    code_name = "invalid_client"


class InvalidGrant(Unauthorized):
    """400 ``invalid_grant`` from the token exchange (``POST /oauth/token``, RFC 8693) that
    tokenbox did not explain with one of its own codes: the workload token was refused."""

    code_name = "invalid_grant"


class Forbidden(TokenboxError):
    """403 ``forbidden``: the service account is not allowed (token requests need superadmin)."""

    code_name = "forbidden"


class InvalidTarget(Forbidden):
    """400 ``invalid_target`` from the token exchange that tokenbox did not explain with one of
    its own codes: the workload may not use that connection."""

    code_name = "invalid_target"


class UnknownConnectorType(TokenboxError):
    """404 ``unknown_connector_type``: tokenbox knows no such connector type."""

    code_name = "unknown_connector_type"


class NotConnected(TokenboxError):
    """404 ``not_connected``: the app has no connection of that type."""

    code_name = "not_connected"


class NotFound(TokenboxError):
    """404 ``not_found``: no such route (is the URL tokenbox's base URL?)."""

    code_name = "not_found"


class ConnectorNotConfigured(TokenboxError):
    """409 ``connector_not_configured``: the connector type has no client credentials."""

    code_name = "connector_not_configured"


class ReauthorizationRequired(TokenboxError):
    """409 ``reauthorization_required``: the provider refused the refresh token (or the token
    expired without one). The app's tenant must reconnect; retrying will not help."""

    code_name = "reauthorization_required"


class ProviderError(TokenboxError):
    """502 ``provider_error``: the provider answered, but not with a token (e.g. our client
    secret is wrong): an operator problem."""

    code_name = "provider_error"


class ProviderUnavailable(TokenboxError):
    """503 ``provider_unavailable``: the provider is down and no token valid for the requested
    time is left. Raised after the client's bounded retries; ``retry_after`` says when to retry."""

    code_name = "provider_unavailable"


class TokenboxUnavailable(TokenboxError):
    """tokenbox itself cannot answer: connection refused or timed out, 503 ``unavailable``
    (its database is down), or a gateway error from a proxy in front of it."""

    code_name = "unavailable"


class InternalError(TokenboxError):
    """500 ``internal_error``: the details are in tokenbox's log (see ``request_id``)."""

    code_name = "internal_error"


class UnexpectedResponse(TokenboxError):
    """An answer the client does not understand (not JSON, no ``access_token``, unknown code)."""

    code_name = "unexpected_response"


_BY_CODE: dict[str, type[TokenboxError]] = {
    cls.code_name: cls
    for cls in (
        InvalidRequest,
        Unauthorized,
        InvalidClient,
        InvalidGrant,
        Forbidden,
        InvalidTarget,
        UnknownConnectorType,
        NotConnected,
        NotFound,
        ConnectorNotConfigured,
        ReauthorizationRequired,
        ProviderError,
        ProviderUnavailable,
        TokenboxUnavailable,
        InternalError,
    )
    if cls.code_name is not None
}
_BY_STATUS: dict[int, type[TokenboxError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    500: InternalError,
    502: TokenboxUnavailable,
    503: TokenboxUnavailable,
    504: TokenboxUnavailable,
}


def error_class_for(code: str | None, status: int | None) -> type[TokenboxError]:
    """The exception class for an error code, else for an HTTP status."""
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if status is not None and status in _BY_STATUS:
        return _BY_STATUS[status]
    return UnexpectedResponse
