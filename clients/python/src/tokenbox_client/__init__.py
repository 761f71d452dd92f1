"""Python client of tokenbox: a valid OAuth access token for an app's connection, in one call.

    from tokenbox_client import TokenboxClient, ReauthorizationRequired

    client = TokenboxClient()              # TOKENBOX_URL, TOKENBOX_TOKEN (or TOKENBOX_CLIENT_ID/_SECRET,
                                           # or TOKENBOX_WORKLOAD_TOKEN_FILE)
    token = client.get_token("acme", "github", min_validity=600)
    headers = {"Authorization": f"Bearer {token.access_token}"}

The toucan-connectors integration lives in :mod:`tokenbox_client.toucan` (imported on demand).
"""

from .client import DEFAULT_URL, TokenboxClient, TokenInfo
from .errors import (
    ConfigurationError,
    ConnectorNotConfigured,
    Forbidden,
    InternalError,
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    InvalidTarget,
    NotConnected,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    ReauthorizationRequired,
    TokenboxError,
    TokenboxUnavailable,
    Unauthorized,
    UnexpectedResponse,
    UnknownConnectorType,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "TokenboxClient",
    "TokenInfo",
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
]
