"""The minting kinds against an in-test provider that checks every JWT it receives with the
public key and an independent JWT library (PyJWT):

* ``jwt_bearer`` (RFC 7523 §2.1): a Google-style service-account key comes with the
  connection; the RS256 assertion must carry ``iss`` (the key's ``client_email``), ``sub`` (the
  subject), ``aud`` (the token URL), ``scope``, a ``kid`` and ``exp`` at most an hour after
  ``iat``;
* ``github_app``: the app's JWT (``iss`` the app id, ``exp`` at most ten minutes ahead) buys an
  installation token whose ``expires_at`` is an ISO 8601 time.

Fifty concurrent ``binb-token`` calls on an expired minted credential cause exactly one mint.
"""

from __future__ import annotations

import datetime
import http.cookiejar
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fakes import FakeProvider, Tokenbox, _QuietHandler, _serve, unique

APP_ID = "12345"
SUBJECT = "analyst@example.com"


def _pem(key: rsa.RSAPrivateKey, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


class MintingProvider:
    """A token endpoint for assertions and GitHub's installation-token endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.app_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.client_email = f"{unique('reader')}@project.iam.gserviceaccount.com"
        self.private_key_id = unique("kid")
        self.mints: dict[str, int] = {"jwt_bearer": 0, "github_app": 0}
        self.lifetime = 3600
        self.problems: list[str] = []
        self.claims: list[dict[str, Any]] = []
        self.scopes: list[Any] = []
        self.server = _serve(_MintingHandler, self)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def service_account_json(self) -> dict[str, Any]:
        return {
            "type": "service_account",
            "project_id": "demo",
            "private_key_id": self.private_key_id,
            "private_key": _pem(self.sa_key, serialization.PrivateFormat.PKCS8),
            "client_email": self.client_email,
            "client_id": "1234567890",
            "token_uri": "https://oauth2.googleapis.com/token",
        }

    def app_key_pem(self) -> str:
        # GitHub hands app keys out as PKCS#1 ("BEGIN RSA PRIVATE KEY").
        return _pem(self.app_key, serialization.PrivateFormat.TraditionalOpenSSL)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _MintingHandler(_QuietHandler):
    @property
    def owner(self) -> MintingProvider:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def _problem(self, what: str) -> None:
        with self.owner.lock:
            self.owner.problems.append(what)
        self.reply(400, {"error": "invalid_grant", "error_description": what})

    def do_POST(self) -> None:  # noqa: N802
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.headers.get("User-Agent"):
            return self._problem("no User-Agent")
        if self.path == "/token":
            return self._assertion(owner, dict(urllib.parse.parse_qsl(raw.decode())))
        parts = self.path.strip("/").split("/")
        if parts[:2] == ["app", "installations"] and parts[3:] == ["access_tokens"]:
            return self._installation(owner, parts[2], raw)
        self.reply(404, {"message": "Not Found"})

    def _assertion(self, owner: MintingProvider, form: dict[str, str]) -> None:
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._problem(f"grant_type {form.get('grant_type')}")
        assertion = form.get("assertion", "")
        try:
            claims = jwt.decode(
                assertion,
                owner.sa_key.public_key(),
                algorithms=["RS256"],
                audience=f"{owner.url}/token",
                issuer=owner.client_email,
                options={"require": ["iss", "aud", "exp", "iat"]},
            )
        except jwt.PyJWTError as exc:
            return self._problem(f"assertion refused: {exc}")
        header = jwt.get_unverified_header(assertion)
        if header.get("kid") != owner.private_key_id:
            return self._problem("kid")
        if claims["exp"] - claims["iat"] > 3600 or claims["exp"] > time.time() + 3600 + 5:
            return self._problem("exp more than an hour ahead")
        if claims.get("sub") != SUBJECT or claims.get("scope") != "read write":
            return self._problem(f"sub/scope {claims.get('sub')} {claims.get('scope')}")
        with owner.lock:
            owner.claims.append(claims)
            owner.mints["jwt_bearer"] += 1
            n = owner.mints["jwt_bearer"]
            lifetime = owner.lifetime
        self.reply(200, {"access_token": f"ya29.minted-{n}", "token_type": "Bearer", "expires_in": lifetime})

    def _installation(self, owner: MintingProvider, installation: str, raw: bytes) -> None:
        auth = self.headers.get("Authorization", "")
        try:
            claims = jwt.decode(
                auth.removeprefix("Bearer "),
                owner.app_key.public_key(),
                algorithms=["RS256"],
                issuer=APP_ID,
                options={"require": ["iss", "exp", "iat"]},
            )
        except jwt.PyJWTError as exc:
            self.reply(401, {"message": f"A JSON web token could not be decoded: {exc}"})
            return
        if claims["exp"] > time.time() + 600 or claims["exp"] - claims["iat"] > 600:
            return self._problem("app JWT valid more than ten minutes")
        if self.headers.get("Accept") != "application/vnd.github+json":
            return self._problem("Accept")
        if installation != "4242":
            self.reply(404, {"message": "Not Found"})
            return
        with owner.lock:
            owner.scopes.append(json.loads(raw) if raw else None)
            owner.mints["github_app"] += 1
            n = owner.mints["github_app"]
            lifetime = owner.lifetime
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=lifetime)
        self.reply(201, {"token": f"ghs_minted{n}", "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})


@pytest.fixture(scope="module")
def minting() -> Iterator[MintingProvider]:
    fake = MintingProvider()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def minting_tokenbox(
    tokenbox_bin: Path,
    provider: FakeProvider,
    minting: MintingProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Tokenbox]:
    workdir = tmp_path_factory.mktemp("tokenbox-minting")
    key_file = workdir / "app.pem"
    key_file.write_text(minting.app_key_pem())
    key_file.chmod(0o600)
    config = f"""
[connector_types.gsa]
kind = "jwt_bearer"
token_url = "{minting.url}/token"
scopes = ["read", "write"]
api_base_url = "{minting.url}/gapi"

[connector_types.ghapp]
kind = "github_app"
authorization_url = "{minting.url}/apps/tokenbox-test/installations/new"
api_base_url = "{minting.url}"
app_id = "{APP_ID}"
private_key_file = "{key_file}"
"""
    server = Tokenbox(tokenbox_bin, workdir, provider, extra_config=config)
    try:
        yield server
    finally:
        server.stop()


def _fifty_concurrent(tokenbox: Tokenbox, app: str, connector_type: str) -> list[dict[str, Any]]:
    def one(_: int) -> tuple[int, Any]:
        return tokenbox.request("GET", f"/{app}/{connector_type}/binb-token", token=tokenbox.superadmin_token)

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(one, range(50)))
    assert all(status == 200 for status, _ in answers), answers
    return [body for _, body in answers]


@pytest.mark.parametrize(
    ("connector_type", "kind", "body"),
    [
        ("gsa", "jwt_bearer", None),
        ("ghapp", "github_app", {"installation_id": 4242}),
    ],
)
def test_fifty_callers_on_an_expired_minted_credential_cause_one_mint(
    minting_tokenbox: Tokenbox, minting: MintingProvider, connector_type: str, kind: str, body: Any
) -> None:
    if body is None:
        body = {"service_account_key": minting.service_account_json(), "subject": SUBJECT}
    app = unique("tenant")
    minting.lifetime = 0  # the first token is issued already expired
    before = minting.mints[kind]
    status, view = minting_tokenbox.request("PUT", f"/{app}/{connector_type}/connection", body)
    assert status == 201, view
    assert minting.mints[kind] == before + 1
    assert not minting.problems, minting.problems
    assert "private_key" not in json.dumps(view)

    minting.lifetime = 3600
    answers = _fifty_concurrent(minting_tokenbox, app, connector_type)
    assert minting.mints[kind] == before + 2, "fifty callers on an expired token: one mint"
    tokens = {a["access_token"] for a in answers}
    assert len(tokens) == 1
    token = tokens.pop()
    assert answers[0]["headers"] == {"Authorization": f"Bearer {token}"}
    assert 3500 <= answers[0]["expires_in"] <= 3600
    assert not minting.problems, minting.problems


def test_the_assertion_and_the_app_jwt_are_what_the_providers_require(
    minting_tokenbox: Tokenbox, minting: MintingProvider
) -> None:
    app = unique("tenant")
    status, view = minting_tokenbox.request(
        "PUT",
        f"/{app}/gsa/connection",
        {"service_account_key": minting.service_account_json(), "subject": SUBJECT},
    )
    assert status == 201, view
    claims = minting.claims[-1]
    assert claims["iss"] == minting.client_email
    assert claims["sub"] == SUBJECT
    assert claims["aud"] == f"{minting.url}/token"
    assert claims["scope"] == "read write"
    assert 0 < claims["exp"] - claims["iat"] <= 3600

    # A key the provider does not know: 422 invalid_credentials, nothing stored.
    other = minting.service_account_json()
    other["private_key"] = _pem(
        rsa.generate_private_key(public_exponent=65537, key_size=2048), serialization.PrivateFormat.PKCS8
    )
    status, body = minting_tokenbox.request(
        "PUT", f"/{unique('tenant')}/gsa/connection", {"service_account_key": other, "subject": SUBJECT}
    )
    assert status == 422, body
    assert body["error"] == "invalid_credentials"
    assert "BEGIN" not in body["message"]
    minting.problems.clear()

    # An installation GitHub does not know: 422 as well.
    status, body = minting_tokenbox.request(
        "PUT", f"/{unique('tenant')}/ghapp/connection", {"installation_id": 1}
    )
    assert status == 422, body

    # Neither key appears in the server's log.
    log = minting_tokenbox.log.read_text(errors="replace")
    for secret in ("BEGIN PRIVATE KEY", "BEGIN RSA PRIVATE KEY", "ya29.minted", "ghs_minted"):
        assert secret not in log


def test_a_scoped_down_github_token_is_minted_once_per_scope(
    minting_tokenbox: Tokenbox, minting: MintingProvider
) -> None:
    app = unique("tenant")
    minting.lifetime = 3600
    status, view = minting_tokenbox.request("PUT", f"/{app}/ghapp/connection", {"installation_id": 4242})
    assert status == 201, view
    unscoped = minting_tokenbox.request(
        "GET", f"/{app}/ghapp/binb-token", token=minting_tokenbox.superadmin_token
    )[1]
    before = minting.mints["github_app"]

    path = f"/{app}/ghapp/binb-token?repositories=jobs,api&permissions=contents:read"
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(
            pool.map(
                lambda _: minting_tokenbox.request("GET", path, token=minting_tokenbox.superadmin_token),
                range(20),
            )
        )
    assert all(status == 200 for status, _ in answers), answers
    tokens = {body["access_token"] for _, body in answers}
    assert len(tokens) == 1 and unscoped["access_token"] not in tokens
    assert minting.mints["github_app"] == before + 1, "one mint for twenty callers of one scope"
    assert minting.scopes[-1] == {"repositories": ["api", "jobs"], "permissions": {"contents": "read"}}

    # The same scope written differently shares the token; another scope gets its own.
    same = f"/{app}/ghapp/binb-token?repositories=api,jobs&permissions=contents:read"
    assert (
        minting_tokenbox.request("GET", same, token=minting_tokenbox.superadmin_token)[1]["access_token"]
        in tokens
    )
    other = f"/{app}/ghapp/binb-token?permissions=issues:write"
    status, body = minting_tokenbox.request("GET", other, token=minting_tokenbox.superadmin_token)
    assert status == 200 and body["access_token"] not in tokens
    assert minting.scopes[-1] == {"permissions": {"issues": "write"}}
    assert minting.mints["github_app"] == before + 2

    # A scope on another kind, or a malformed one, is a 400.
    status, body = minting_tokenbox.request(
        "GET", f"/{app}/ghapp/binb-token?permissions=contents", token=minting_tokenbox.superadmin_token
    )
    assert status == 400 and body["error"] == "invalid_request"


def test_a_tenant_installs_the_github_app_through_a_connect_link(
    minting_tokenbox: Tokenbox, minting: MintingProvider
) -> None:
    app = unique("tenant")
    status, link = minting_tokenbox.request("POST", f"/{app}/ghapp/connect-links", {})
    assert status == 201, link
    secret = link["url"].rsplit("/", 1)[1]

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(NoRedirect, urllib.request.HTTPCookieProcessor(jar))

    def go(method: str, url: str) -> tuple[int, Any, str]:
        request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        try:
            with browser.open(request, timeout=30) as response:
                return response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.headers, exc.read().decode()

    # Connect sends the browser to the app's installation page with a state.
    status, headers, _ = go("POST", f"{minting_tokenbox.url}/connect/{secret}")
    assert status == 303
    install = urllib.parse.urlsplit(headers["Location"])
    assert install.path == "/apps/tokenbox-test/installations/new"
    state = urllib.parse.parse_qs(install.query)["state"][0]

    # GitHub comes back to the Setup URL with the installation and the same state; an unknown
    # installation (another app's) is refused and the link stays usable.
    before = minting.mints["github_app"]
    callback = f"{minting_tokenbox.url}/oauth/callback"
    status, _, page = go("GET", f"{callback}?installation_id=1&setup_action=install&state={state}")
    assert status == 502, page
    assert minting_tokenbox.request("GET", f"/{app}/ghapp/connection")[0] == 404
    status, headers, _ = go("POST", f"{minting_tokenbox.url}/connect/{secret}")
    assert status == 303
    state = urllib.parse.parse_qs(urllib.parse.urlsplit(headers["Location"]).query)["state"][0]
    status, _, page = go("GET", f"{callback}?installation_id=4242&setup_action=install&state={state}")
    assert status == 200, page
    assert minting.mints["github_app"] == before + 1
    view = minting_tokenbox.connection(app, "ghapp")
    assert view["status"] == "active"
    answer = minting_tokenbox.request(
        "GET", f"/{app}/ghapp/binb-token", token=minting_tokenbox.superadmin_token
    )[1]
    assert answer["access_token"].startswith("ghs_minted")
    assert answer["metadata"]["installation_id"] == 4242

    # The state is single-use: replaying the setup redirect is refused.
    status, _, _ = go("GET", f"{callback}?installation_id=4242&setup_action=install&state={state}")
    assert status == 400


def test_a_tenant_pastes_its_service_account_key_into_the_connect_form(
    minting_tokenbox: Tokenbox, minting: MintingProvider
) -> None:
    app = unique("tenant")
    status, link = minting_tokenbox.request("POST", f"/{app}/gsa/connect-links", {})
    assert status == 201, link
    page_url = link["url"]
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def form_token() -> str:
        with browser.open(page_url, timeout=30) as response:
            page = response.read().decode()
        assert 'name="service_account_key"' in page and "<textarea" in page
        assert 'name="subject"' in page
        return page.split('name="form_token" value="', 1)[1].split('"', 1)[0]

    def submit(fields: dict[str, str]) -> tuple[int, str]:
        data = urllib.parse.urlencode({"form_token": form_token(), **fields}).encode()
        request = urllib.request.Request(f"{page_url}/credential", data=data, method="POST")
        try:
            with browser.open(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    # Not a key file: refused, nothing stored.
    status, page = submit({"service_account_key": "not json", "subject": SUBJECT})
    assert status == 400, page
    assert minting_tokenbox.request("GET", f"/{app}/gsa/connection")[0] == 404
    # The key file's contents: the first token is minted with an assertion the provider checks.
    before = minting.mints["jwt_bearer"]
    key = json.dumps(minting.service_account_json())
    status, page = submit({"service_account_key": key, "subject": SUBJECT})
    assert status == 200, page
    assert minting.mints["jwt_bearer"] == before + 1
    assert not minting.problems, minting.problems
    assert "BEGIN PRIVATE KEY" not in page
    answer = minting_tokenbox.request(
        "GET", f"/{app}/gsa/binb-token", token=minting_tokenbox.superadmin_token
    )[1]
    assert answer["access_token"].startswith("ya29.minted")
