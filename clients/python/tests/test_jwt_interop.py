"""An independent JWT library (PyJWT, with cryptography's Ed25519) validates the JWTs of
tokenbox's client-credentials grant against its ``/.well-known/jwks.json``: what a backend
that receives such a JWT would do."""

from __future__ import annotations

import base64
import datetime
import json
import time
import urllib.parse
import urllib.request
from typing import Any

import jwt
import pytest

from tokenbox_client import TokenboxClient

from fakes import Tokenbox


def b64url_json(part: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


ISSUED_AFTER = ISSUED_BEFORE = 0


@pytest.fixture(scope="module")
def issued(tokenbox: Tokenbox) -> str:
    """A JWT the Python client obtained (HTTP Basic client authentication); its iat must fall
    between the whole seconds before and after the request."""
    global ISSUED_AFTER, ISSUED_BEFORE
    client = TokenboxClient(
        url=tokenbox.url, client_id=tokenbox.superadmin_name, client_secret=tokenbox.superadmin_token
    )
    ISSUED_AFTER = int(time.time())
    token = client.access_token()
    ISSUED_BEFORE = int(time.time()) + 1
    return token


@pytest.fixture(scope="module")
def jwks_client(tokenbox: Tokenbox) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(f"{tokenbox.url}/.well-known/jwks.json", cache_keys=True)


def test_jwks_is_an_ed25519_key_set(tokenbox: Tokenbox, issued: str) -> None:
    with urllib.request.urlopen(f"{tokenbox.url}/.well-known/jwks.json", timeout=10) as resp:
        assert resp.status == 200
        jwks = json.loads(resp.read())
    keys = jwks["keys"]
    assert keys
    for key in keys:
        assert {k: key[k] for k in ("kty", "crv", "alg", "use")} == {
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
        }
        assert len(base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))) == 32
    header = jwt.get_unverified_header(issued)
    assert header["alg"] == "EdDSA" and header["typ"] == "JWT"
    assert header["kid"] in {k["kid"] for k in keys}
    # Each key of the set loads into PyJWT as an Ed25519 key.
    for key in jwt.PyJWKSet.from_dict(jwks).keys:
        assert key.algorithm_name == "EdDSA"


def test_pyjwt_validates_the_jwt(tokenbox: Tokenbox, issued: str, jwks_client: jwt.PyJWKClient) -> None:
    signing_key = jwks_client.get_signing_key_from_jwt(issued)
    claims = jwt.decode(
        issued,
        signing_key.key,
        algorithms=["EdDSA"],
        audience="tokenbox",
        issuer=tokenbox.url,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    assert claims["sub"] == tokenbox.superadmin_name
    assert claims["role"] == "superadmin"
    assert claims["iss"] == tokenbox.url
    assert claims["aud"] == "tokenbox"
    assert claims["exp"] - claims["iat"] == 900
    assert ISSUED_AFTER <= claims["iat"] <= ISSUED_BEFORE
    assert claims["jti"]
    assert "scope" not in claims  # an unscoped account


def test_pyjwt_validates_a_jwt_from_form_credentials(
    tokenbox: Tokenbox, jwks_client: jwt.PyJWKClient
) -> None:
    """The other client authentication of RFC 6749 §2.3.1: client_id and client_secret in the
    form body; an admin account this time."""
    body = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": tokenbox.admin_name,
            "client_secret": tokenbox.admin_token,
        }
    ).encode()
    request = urllib.request.Request(
        f"{tokenbox.url}/oauth/token",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers.get("Cache-Control") == "no-store"
        answer = json.loads(resp.read())
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 900
    token = answer["access_token"]
    claims = jwt.decode(
        token,
        jwks_client.get_signing_key_from_jwt(token).key,
        algorithms=["EdDSA"],
        audience="tokenbox",
        issuer=tokenbox.url,
    )
    assert (claims["sub"], claims["role"]) == (tokenbox.admin_name, "admin")


def test_pyjwt_rejects_a_tampered_jwt(tokenbox: Tokenbox, issued: str, jwks_client: jwt.PyJWKClient) -> None:
    key = jwks_client.get_signing_key_from_jwt(issued).key
    header, payload, signature = issued.split(".")

    # Another subject and role, the original signature.
    claims = b64url_json(payload)
    claims.update(sub="someone-else", role="superadmin")
    forged = f"{header}.{b64url(claims)}.{signature}"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key, algorithms=["EdDSA"], audience="tokenbox", issuer=tokenbox.url)

    # One flipped bit of the signature.
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 1
    flipped = f"{header}.{payload}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(flipped, key, algorithms=["EdDSA"], audience="tokenbox", issuer=tokenbox.url)

    # "alg": "none" with no signature.
    unsigned = f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    with pytest.raises(jwt.InvalidTokenError):
        jwt.decode(unsigned, key, algorithms=["EdDSA"], audience="tokenbox", issuer=tokenbox.url)

    # tokenbox refuses the forged ones too, and accepts the original.
    assert tokenbox.request("GET", "/connector-types", token=issued)[0] == 200
    assert tokenbox.request("GET", "/connector-types", token=forged)[0] == 401
    assert tokenbox.request("GET", "/connector-types", token=flipped)[0] == 401


def test_pyjwt_rejects_a_wrong_audience_or_issuer(
    tokenbox: Tokenbox, issued: str, jwks_client: jwt.PyJWKClient
) -> None:
    key = jwks_client.get_signing_key_from_jwt(issued).key
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(issued, key, algorithms=["EdDSA"], audience="another-service", issuer=tokenbox.url)
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(issued, key, algorithms=["EdDSA"], audience="tokenbox", issuer="http://127.0.0.1:1")
    # A verifier that only accepts another algorithm refuses it.
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(issued, key, algorithms=["RS256"], audience="tokenbox", issuer=tokenbox.url)


def test_pyjwt_rejects_an_expired_jwt(short_jwt_tokenbox: Tokenbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JWT of the 100-second server, checked by PyJWT with its clock set one second before,
    then one second after the JWT's exp (no test time passes)."""
    server = short_jwt_tokenbox
    token = TokenboxClient(
        url=server.url, client_id=server.superadmin_name, client_secret=server.superadmin_token
    ).access_token()
    key = jwt.PyJWKClient(f"{server.url}/.well-known/jwks.json").get_signing_key_from_jwt(token).key
    claims = jwt.decode(token, key, algorithms=["EdDSA"], audience="tokenbox", issuer=server.url)
    assert claims["exp"] - claims["iat"] == 100

    def pyjwt_clock_at(epoch: float) -> None:
        class At(datetime.datetime):
            @classmethod
            def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
                return datetime.datetime.fromtimestamp(epoch, tz)

        monkeypatch.setattr(jwt.api_jwt, "datetime", At)

    pyjwt_clock_at(claims["exp"] - 1)
    jwt.decode(token, key, algorithms=["EdDSA"], audience="tokenbox", issuer=server.url)
    pyjwt_clock_at(claims["exp"] + 1)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, key, algorithms=["EdDSA"], audience="tokenbox", issuer=server.url)
