"""Jobs without static secrets, from the job's side: a Kubernetes-like issuer on loopback (its
discovery document and JWKS served here, its RS256 key made with ``cryptography``, its tokens
signed with PyJWT), the RFC 8693 token exchange performed by an independent OAuth 2 client
(authlib's ``OAuth2Session``), and ``TokenboxClient(workload_token_file=...)``, which reads
the token file again for every exchange (the kubelet rotates it)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from cryptography.hazmat.primitives.asymmetric import rsa

from tokenbox_client import (
    ConfigurationError,
    Forbidden,
    NotConnected,
    TokenboxClient,
    Unauthorized,
)

from fakes import FakeProvider, Tokenbox, unique

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
RUNNER = "system:serviceaccount:extract:runner"
ACCOUNT = "extract-jobs"


class Issuer:
    """An OpenID issuer on loopback shaped like a Kubernetes API server's: discovery at
    ``/.well-known/openid-configuration``, keys at ``/openid/v1/jwks``, RS256 tokens."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = unique("rsa")
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/.well-known/openid-configuration":
                    body: dict[str, Any] = {
                        "issuer": issuer.url,
                        "jwks_uri": f"{issuer.url}/openid/v1/jwks",
                        "response_types_supported": ["id_token"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                    }
                elif self.path == "/openid/v1/jwks":
                    body = {"keys": [jwk]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, sub: str = RUNNER, namespace: str = "extract") -> str:
        """A projected service-account token as the kubelet writes it (audience tokenbox)."""
        now = int(time.time())
        account = sub.rsplit(":", 1)[-1]
        claims = {
            "aud": ["tokenbox"],
            "exp": now + 600,
            "iat": now,
            "nbf": now,
            "iss": self.url,
            "jti": unique("jti"),
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": "extract-1-abcde", "uid": "8a1f0c2e-0000-4000-8000-000000000001"},
                "serviceaccount": {"name": account, "uid": "8a1f0c2e-0000-4000-8000-000000000002"},
            },
            "sub": sub,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    fake = Issuer()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def workload_tokenbox(
    tokenbox_bin: Path, provider: FakeProvider, tmp_path_factory: pytest.TempPathFactory, issuer: Issuer
) -> Iterator[Tokenbox]:
    """A tokenbox trusting the issuer: its ``extract`` namespace acts as the ``extract-jobs``
    service account, a superadmin limited to the apps ``wl-*``."""
    server = Tokenbox(
        tokenbox_bin,
        tmp_path_factory.mktemp("tokenbox-workload"),
        provider,
        extra_config=f"""accounts_cache_seconds = 0

[[trusted_issuers]]
issuer = "{issuer.url}"
discovery = true
audience = "tokenbox"
algorithms = ["RS256"]
[[trusted_issuers.rules]]
subject = "system:serviceaccount:extract:*"
account = "{ACCOUNT}"
claims = {{ "kubernetes.io.namespace" = "extract" }}
""",
    )
    try:
        server.cli("service-account", "create", ACCOUNT, "--role", "superadmin", "--apps", "wl-*")
        yield server
    finally:
        server.stop()


def connected(tokenbox: Tokenbox, prefix: str = "wl") -> str:
    app = unique(prefix)
    tokenbox.connect(app, "github", access_token=f"{app}~gho", expires_in=3600, scope="repo")
    return app


def authlib_exchange(tokenbox: Tokenbox, subject_token: str, resource: str) -> dict[str, Any]:
    """RFC 8693 with authlib's OAuth 2 client: the workload's JWT is the only credential (no
    client secret: ``token_endpoint_auth_method="none"``)."""
    session = OAuth2Session(client_id="extract-job", token_endpoint_auth_method="none")
    try:
        token: dict[str, Any] = session.fetch_token(
            f"{tokenbox.url}/oauth/token",
            grant_type=EXCHANGE,
            subject_token=subject_token,
            subject_token_type=JWT_TYPE,
            resource=resource,
        )
    finally:
        session.close()
    return token


def test_authlib_exchanges_a_kubernetes_token_for_the_provider_token(
    workload_tokenbox: Tokenbox, issuer: Issuer
) -> None:
    app = connected(workload_tokenbox)
    token = authlib_exchange(workload_tokenbox, issuer.token(), f"tokenbox:connection:{app}/github")
    assert token["access_token"] == f"{app}~gho"
    assert token["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert token["token_type"] == "Bearer"
    assert 0 < token["expires_in"] <= 3600
    assert token["scope"] == "repo"


def test_authlib_gets_invalid_target_outside_the_accounts_scope_and_invalid_grant_unmapped(
    workload_tokenbox: Tokenbox, issuer: Issuer
) -> None:
    # Connected, but not an app of the mapped account (wl-*).
    other = connected(workload_tokenbox, prefix="other")
    with pytest.raises(OAuthError) as refused:
        authlib_exchange(workload_tokenbox, issuer.token(), f"tokenbox:connection:{other}/github")
    assert refused.value.error == "invalid_target"
    assert "outside the account's apps" in str(refused.value.description)
    # A namespace that no rule maps.
    app = connected(workload_tokenbox)
    with pytest.raises(OAuthError) as refused:
        authlib_exchange(
            workload_tokenbox,
            issuer.token("system:serviceaccount:default:runner", namespace="default"),
            f"tokenbox:connection:{app}/github",
        )
    assert refused.value.error == "invalid_grant"
    # Signed by another key under the issuer's kid.
    forged = jwt.encode(
        {**jwt.decode(issuer.token(), options={"verify_signature": False})},
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
        headers={"kid": issuer.kid},
    )
    with pytest.raises(OAuthError) as refused:
        authlib_exchange(workload_tokenbox, forged, f"tokenbox:connection:{app}/github")
    assert refused.value.error == "invalid_grant"


def test_the_client_reads_the_token_file_again_for_every_exchange(
    workload_tokenbox: Tokenbox, issuer: Issuer, tmp_path: Path
) -> None:
    app = connected(workload_tokenbox)
    token_file = tmp_path / "tokenbox-token"
    token_file.write_text(issuer.token() + "\n")
    client = TokenboxClient(url=workload_tokenbox.url, workload_token_file=token_file, cache_max_age=0)
    assert str(token_file) in repr(client)
    token = client.get_token(app, "github")
    assert token.access_token == f"{app}~gho"
    assert token.request_headers() == {"Authorization": f"Bearer {app}~gho"}
    assert 0 < (token.expires_in or 0) <= 3600
    # The workload token is the client's bearer for tokenbox's other routes too.
    assert client.access_token() == token_file.read_text().strip()

    # The kubelet rotates the file: the next exchange sends what is there now. A token of
    # an unmapped namespace is refused ...
    token_file.write_text(issuer.token("system:serviceaccount:default:runner", namespace="default"))
    with pytest.raises(Unauthorized) as refused:
        client.get_token(app, "github")
    assert refused.value.status == 400 and "no rule" in refused.value.message
    # ... and a good one works again, without a new client.
    token_file.write_text(issuer.token())
    assert client.get_token(app, "github").access_token == f"{app}~gho"

    # binb-token's exceptions: outside the account's scope, and a connection that is missing.
    other = connected(workload_tokenbox, prefix="other")
    with pytest.raises(Forbidden):
        client.get_token(other, "github")
    with pytest.raises(NotConnected):
        client.get_token(unique("wl"), "github")


def test_the_token_file_can_come_from_the_environment_and_excludes_other_credentials(
    workload_tokenbox: Tokenbox, issuer: Issuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = connected(workload_tokenbox)
    token_file = tmp_path / "token"
    token_file.write_text(issuer.token())
    monkeypatch.setenv("TOKENBOX_WORKLOAD_TOKEN_FILE", str(token_file))
    client = TokenboxClient(url=workload_tokenbox.url)
    assert client.get_token(app, "github").access_token == f"{app}~gho"
    with pytest.raises(ConfigurationError, match="not both"):
        TokenboxClient(url=workload_tokenbox.url, token="tbx_x", workload_token_file=token_file)
    missing = TokenboxClient(url=workload_tokenbox.url, workload_token_file=tmp_path / "absent")
    with pytest.raises(ConfigurationError, match="cannot read the workload token file"):
        missing.get_token(app, "github")
