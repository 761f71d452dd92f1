"""One extraction job, written once, fetches from three provider APIs of three different kinds
(an API key in a header, HTTP Basic, client-credentials tokens) using only the ``headers`` and
``api_base_url`` tokenbox serves with each credential."""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_extraction import run_job

from fakes import FakeProvider, Tokenbox, _QuietHandler, _serve, unique

API_KEY = unique("key")
USER, PASSWORD = "alice@example.com/token", unique("pw")
CLIENT_ID, CLIENT_SECRET = "machine-client", unique("machine-secret")


class KindsApi:
    """Three provider APIs on one loopback server, each accepting only its own credential:
    ``/keyed`` an ``X-Api-Key`` header, ``/basic`` HTTP Basic, ``/machine`` a bearer token it
    minted itself at ``/token`` (client credentials, client authenticated with HTTP Basic)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.minted: list[str] = []
        self.seen: list[tuple[str, str]] = []  # (path, how it was authenticated)
        self.server = _serve(_KindsHandler, self)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _KindsHandler(_QuietHandler):
    @property
    def owner(self) -> KindsApi:
        return self.server.owner  # type: ignore[attr-defined, no-any-return]

    def _answer(self, status: int, body: Any) -> None:
        self.reply(status, body)

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if self.path != "/token" or self.headers.get("Authorization") != expected:
            return self._answer(401, {"error": "invalid_client"})
        if form.get("grant_type") != ["client_credentials"]:
            return self._answer(400, {"error": "unsupported_grant_type"})
        with self.owner.lock:
            token = f"minted-{len(self.owner.minted) + 1}"
            self.owner.minted.append(token)
        self._answer(200, {"access_token": token, "token_type": "bearer", "expires_in": 3600})

    def do_GET(self) -> None:  # noqa: N802
        auth = self.headers.get("Authorization") or ""
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/keyed/") and self.headers.get("X-Api-Key") == API_KEY and not auth:
            how = "api_key"
        elif path.startswith("/basic/") and auth == basic:
            how = "basic"
        elif path.startswith("/machine/") and auth.removeprefix("Bearer ") in self.owner.minted:
            how = "bearer"
        else:
            return self._answer(401, {"error": "unauthorized"})
        with self.owner.lock:
            self.owner.seen.append((path, how))
        self._answer(200, {"items": [{"id": 1}, {"id": 2}, {"id": 3}]})


@pytest.fixture(scope="module")
def api() -> Iterator[KindsApi]:
    fake = KindsApi()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def kinds_tokenbox(
    tokenbox_bin: Path, provider: FakeProvider, api: KindsApi, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tokenbox]:
    config = f"""
[connector_types.keyed]
kind = "api_key"
api_base_url = "{api.url}/keyed"
api_key_header = "X-Api-Key"
verify_url = "{api.url}/keyed/me"

[connector_types.basicauth]
kind = "basic"
api_base_url = "{api.url}/basic"
verify_url = "{api.url}/basic/me"

[connector_types.machine]
kind = "client_credentials"
token_url = "{api.url}/token"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
client_auth = "basic"
api_base_url = "{api.url}/machine"
"""
    server = Tokenbox(tokenbox_bin, tmp_path_factory.mktemp("tokenbox-kinds"), provider, extra_config=config)
    try:
        yield server
    finally:
        server.stop()


def test_one_job_fetches_from_three_kinds_with_only_headers_and_api_base_url(
    kinds_tokenbox: Tokenbox, api: KindsApi, tmp_path: Path
) -> None:
    app = unique("tenant")
    for connector_type, body in [
        ("keyed", {"api_key": API_KEY}),
        ("basicauth", {"username": USER, "password": PASSWORD}),
        ("machine", {}),
    ]:
        status, answer = kinds_tokenbox.request("PUT", f"/{app}/{connector_type}/connection", body)
        assert status == 201, answer

    done = run_job(
        kinds_tokenbox,
        "--apps",
        f"{app}/keyed,{app}/basicauth,{app}/machine",
        "--endpoint",
        "/records",
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    statuses = {r["connector_type"]: (r["status"], r.get("records")) for r in report["results"]}
    assert statuses == {
        "keyed": ("success", 3),
        "basicauth": ("success", 3),
        "machine": ("success", 3),
    }, report
    # Each API saw its own kind of credential, sent as tokenbox's `headers` said.
    assert sorted(s for s in api.seen if s[0].endswith("/records")) == [
        ("/basic/records", "basic"),
        ("/keyed/records", "api_key"),
        ("/machine/records", "bearer"),
    ]
    # No credential in the job's output.
    for secret in (API_KEY, PASSWORD, CLIENT_SECRET, *api.minted):
        assert secret not in done.stdout + done.stderr


def test_the_client_and_the_toucan_keeper_expose_headers_query_and_api_base_url(
    kinds_tokenbox: Tokenbox, api: KindsApi
) -> None:
    from tokenbox_client import TokenboxClient
    from tokenbox_client.toucan import TokenboxSecretsKeeper

    app = unique("tenant")
    status, answer = kinds_tokenbox.request("PUT", f"/{app}/keyed/connection", {"api_key": API_KEY})
    assert status == 201, answer
    client = TokenboxClient(url=kinds_tokenbox.url, token=kinds_tokenbox.superadmin_token)
    token = client.get_token(app, "keyed")
    assert token.token_type == "ApiKey"
    assert token.request_headers() == {"X-Api-Key": API_KEY}
    assert token.api_base_url == f"{api.url}/keyed"
    assert API_KEY not in repr(token)

    keeper = TokenboxSecretsKeeper(url=kinds_tokenbox.url, token=kinds_tokenbox.superadmin_token)
    credential = keeper.credential(f"{app}/keyed")
    assert credential.request_headers() == {"X-Api-Key": API_KEY}
    assert credential.api_base_url == f"{api.url}/keyed"


def test_the_proxy_calls_the_api_without_the_job_holding_the_credential(
    kinds_tokenbox: Tokenbox, api: KindsApi
) -> None:
    from tokenbox_client import TokenboxClient

    app = unique("tenant")
    status, answer = kinds_tokenbox.request(
        "PUT", f"/{app}/basicauth/connection", {"username": USER, "password": PASSWORD}
    )
    assert status == 201, answer
    client = TokenboxClient(url=kinds_tokenbox.url, token=kinds_tokenbox.superadmin_token)
    proxy = client.proxy(app, "basicauth")
    before = len(api.seen)
    response = proxy.get("/records", params={"page": 2})
    assert response.status_code == 200 and response.ok
    assert len(response.json()["items"]) == 3
    assert api.seen[before:] == [("/basic/records", "basic")]
    streamed = b"".join(proxy.get("/records", stream=True).iter_content(4))
    assert b'"items"' in streamed
    missing = proxy.get("/records", params={"x": 1})
    assert missing.status_code == 200
    refused = client.proxy(app, "keyed").get("/records")
    assert refused.status_code == 404
    assert refused.json()["error"] == "not_connected"
