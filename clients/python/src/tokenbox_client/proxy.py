"""Calls to a provider's API through tokenbox's proxy mode: the job never holds the credential.

    api = client.proxy("acme", "hubspot")
    calls = api.get("/crm/v3/objects/contacts", params={"limit": 100}).json()

tokenbox adds the connection's credential, refreshes and retries once after a 401 (a POST,
PATCH only with ``retry_unsafe=True``), and answers ``429`` with ``Retry-After`` while the
provider asked every caller to slow down.
"""

from __future__ import annotations

import json as jsonlib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from email.message import Message
    from http.client import HTTPResponse

    from .client import TokenboxClient

#: the header that allows tokenbox to send a non-idempotent request again after a 401
RETRY_UNSAFE = "Tokenbox-Retry-Unsafe"


class ProxyResponse:
    """A provider's answer, as ``requests.Response`` presents one: ``status_code``,
    ``headers``, ``content``, ``text``, ``json()``, ``ok``, ``raise_for_status()``, and
    ``iter_content()`` to read a large answer in chunks (``stream=True``)."""

    def __init__(
        self, status: int, headers: Message, raw: HTTPResponse | None, content: bytes | None
    ) -> None:
        self.status_code = status
        self.headers = headers
        self._raw = raw
        self._content = content

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def content(self) -> bytes:
        if self._content is None:
            assert self._raw is not None
            with self._raw:
                self._content = self._raw.read()
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    def iter_content(self, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        """The body in chunks, read as they arrive (constant memory for a large export)."""
        if self._content is not None:
            for i in range(0, len(self._content), chunk_size):
                yield self._content[i : i + chunk_size]
            return
        assert self._raw is not None
        with self._raw:
            while chunk := self._raw.read(chunk_size):
                yield chunk

    def raise_for_status(self) -> None:
        if not self.ok:
            raise urllib.error.HTTPError("", self.status_code, f"HTTP {self.status_code}", None, None)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<ProxyResponse [{self.status_code}]>"


class Proxy:
    """The provider API of one connection, through tokenbox: ``get``, ``post``, ``put``,
    ``patch``, ``delete`` take a path under the connector's ``api_base_url``."""

    def __init__(self, client: TokenboxClient, app_id: str, connector_type: str) -> None:
        self._client = client
        self._base = (
            f"{client.url}/{urllib.parse.quote(app_id, safe='')}/"
            f"{urllib.parse.quote(connector_type, safe='')}/proxy"
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry_unsafe: bool = False,
        stream: bool = False,
        timeout: float | None = None,
    ) -> ProxyResponse:
        url = self._base + "/" + path.lstrip("/")
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        sent = {"User-Agent": "tokenbox-client-proxy"}
        if json is not None:
            data = jsonlib.dumps(json).encode()
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        sent["Authorization"] = f"Bearer {self._client.access_token()}"
        if retry_unsafe:
            sent[RETRY_UNSAFE] = "true"
        request = urllib.request.Request(url, data=data, method=method.upper(), headers=sent)
        try:
            raw = self._client._opener.open(request, timeout=timeout or self._client.timeout)
        except urllib.error.HTTPError as exc:
            return ProxyResponse(exc.code, exc.headers, None, exc.read())
        if stream:
            return ProxyResponse(raw.status, raw.headers, raw, None)
        with raw:
            return ProxyResponse(raw.status, raw.headers, None, raw.read())

    def get(self, path: str, **kwargs: Any) -> ProxyResponse:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> ProxyResponse:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> ProxyResponse:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> ProxyResponse:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> ProxyResponse:
        return self.request("DELETE", path, **kwargs)
