"""Test harness: the real tokenbox binary on a loopback port with a temporary SQLite file, a
fake OAuth provider (token endpoint + API) and a counting HTTP proxy in front of tokenbox."""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    """An id unique to this test session, valid as a tokenbox app id."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


# ------------------------------------------------------------------------------ HTTP servers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(handler: type[BaseHTTPRequestHandler], owner: Any) -> _Server:
    server = _Server(("127.0.0.1", 0), handler)
    server.owner = owner  # type: ignore[attr-defined]
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name=f"{type(owner).__name__}",
        daemon=True,
    ).start()
    return server


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        if body is not None and not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


# ------------------------------------------------------------------------------ fake provider


@dataclass
class Reply:
    """A canned answer of the fake token endpoint or API."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


#: the token endpoint issues a new token set (rotating the refresh token)
ISSUE = "issue"


def down(retry_after: int = 1) -> Reply:
    return Reply(503, {"error": "temporarily_unavailable"}, {"Retry-After": str(retry_after)})


INVALID_GRANT = Reply(400, {"error": "invalid_grant", "error_description": "revoked"})
INVALID_CLIENT = Reply(401, {"error": "invalid_client"})


class FakeProvider:
    """An OAuth provider: ``POST /token`` (refresh-token grant) and ``GET /api/...``.

    Token endpoint: the behaviour of each refresh token is planned with :meth:`plan`; an
    unplanned one gets ``invalid_grant``; issued refresh tokens issue again (rotating). The API
    answers 200 ``{"login": <label>}`` to the access tokens it knows (:meth:`accept`, and every
    token it issued), 401 otherwise, or what :meth:`api_plan` says for a token.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.token_requests: list[dict[str, Any]] = []
        self.api_requests: list[dict[str, Any]] = []
        self.library_requests: list[dict[str, Any]] = []
        self._plans: dict[str, list[Reply | str | Callable[[], Reply | str]]] = {}
        self._accepted: dict[str, str] = {}
        self._api_plans: dict[str, list[Reply]] = {}
        self._issued = itertools.count(1)
        self.server = _serve(_ProviderHandler, self)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def plan(self, refresh_token: str, *replies: Reply | str | Callable[[], Reply | str]) -> None:
        """What the token endpoint answers to ``refresh_token``, in order; the last repeats."""
        with self.lock:
            self._plans[refresh_token] = list(replies)

    def accept(self, access_token: str, label: str) -> None:
        with self.lock:
            self._accepted[access_token] = label

    def api_plan(self, access_token: str, *replies: Reply) -> None:
        """What the API answers to ``access_token``, in order, before its usual answer."""
        with self.lock:
            self._api_plans[access_token] = list(replies)

    def refreshes(self, refresh_token_prefix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                r
                for r in self.token_requests
                if str(r["form"].get("refresh_token", "")).startswith(refresh_token_prefix)
            ]

    # -- used by the handler

    def _token_reply(self, form: dict[str, str]) -> Reply:
        rt = form.get("refresh_token", "")
        with self.lock:
            plan = self._plans.get(rt)
            if not plan:
                return INVALID_GRANT
            step = plan.pop(0) if len(plan) > 1 else plan[0]
        if callable(step):
            step = step()
        if step != ISSUE:
            assert isinstance(step, Reply)
            return step
        n = next(self._issued)
        label = rt.split("~")[0]
        access, new_rt = f"{label}~at{n}", f"{label}~rt{n}"
        with self.lock:
            self._accepted[access] = label
            self._plans[new_rt] = [ISSUE]
        return Reply(
            200,
            {"access_token": access, "token_type": "bearer", "expires_in": 3600, "refresh_token": new_rt},
        )

    def _api_reply(self, access_token: str) -> Reply:
        with self.lock:
            plan = self._api_plans.get(access_token)
            if plan:
                return plan.pop(0)
            label = self._accepted.get(access_token)
        if label is None:
            return Reply(401, {"message": "Bad credentials"})
        return Reply(200, {"login": label, "items": [{"id": 1}, {"id": 2}]})


class _ProviderHandler(_QuietHandler):
    def do_POST(self) -> None:  # noqa: N802
        owner: FakeProvider = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        form = dict(urllib.parse.parse_qsl(raw))
        auth = self.headers.get("Authorization", "")
        client_id = form.get("client_id")
        if auth.startswith("Basic "):
            client_id = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
        record = {"path": self.path, "form": form, "client_id": client_id, "basic": auth.startswith("Basic ")}
        if self.path.startswith("/library-token"):
            # Where a toucan-connectors connector would refresh by itself: must never be hit.
            with owner.lock:
                owner.library_requests.append(record)
            self.reply(500, {"error": "library-side refresh attempted"})
            return
        with owner.lock:
            owner.token_requests.append(record)
        reply = owner._token_reply(form)
        self.reply(reply.status, reply.body, reply.headers)

    def do_GET(self) -> None:  # noqa: N802
        owner: FakeProvider = self.server.owner  # type: ignore[attr-defined]
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with owner.lock:
            owner.api_requests.append({"path": self.path, "token": token})
        reply = owner._api_reply(token)
        self.reply(reply.status, reply.body, reply.headers)


# ------------------------------------------------------------------------------ counting proxy


class CountingProxy:
    """Forwards GET and POST requests to tokenbox and records each (path, status) it relays.

    ``inject`` holds canned replies returned to GET requests *instead of* forwarding, in order
    (a fake tokenbox-like 503); ``post_inject`` the same for POST requests (``/oauth/token``);
    ``on_reply(status)`` runs after each relayed answer."""

    def __init__(self, target: str) -> None:
        parsed = urllib.parse.urlsplit(target)
        self.target_host = parsed.hostname or "127.0.0.1"
        self.target_port = parsed.port or 80
        self.lock = threading.Lock()
        #: (path, status, monotonic time, Retry-After) of each answer
        self.requests: list[tuple[str, int, float, float | None]] = []
        self.inject: list[Reply] = []
        self.post_inject: list[Reply] = []
        self.on_reply: Callable[[int], None] | None = None
        self.server = _serve(_ProxyHandler, self)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    @property
    def statuses(self) -> list[int]:
        with self.lock:
            return [r[1] for r in self.requests]

    def paths(self, prefix: str = "/") -> list[str]:
        """The paths requested (query string included) that start with ``prefix``."""
        with self.lock:
            return [r[0] for r in self.requests if r[0].startswith(prefix)]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.inject.clear()
            self.post_inject.clear()
        self.on_reply = None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _ProxyHandler(_QuietHandler):
    def do_GET(self) -> None:  # noqa: N802
        self._relay("GET", None)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self._relay("POST", self.rfile.read(length))

    def _relay(self, method: str, data: bytes | None) -> None:
        owner: CountingProxy = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            queue = owner.inject if method == "GET" else owner.post_inject
            injected = queue.pop(0) if queue else None
        if injected is not None:
            status, body, headers = injected.status, injected.body, injected.headers
        else:
            conn = http.client.HTTPConnection(owner.target_host, owner.target_port, timeout=60)
            try:
                fwd = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("authorization", "accept", "user-agent", "content-type")
                }
                conn.request(method, self.path, body=data, headers=fwd)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                keep = {
                    k: v
                    for k, v in resp.getheaders()
                    if k.lower()
                    in ("content-type", "retry-after", "x-request-id", "cache-control", "www-authenticate")
                }
            finally:
                conn.close()
            body, headers = data, keep
        # Recorded before the client gets its answer, so a test that counts right after a call
        # sees every request of it.
        retry_after = {k.lower(): v for k, v in headers.items()}.get("retry-after")
        with owner.lock:
            owner.requests.append(
                (self.path, status, time.monotonic(), float(retry_after) if retry_after else None)
            )
        if owner.on_reply is not None:
            owner.on_reply(status)
        self.reply(status, body, headers)


# ------------------------------------------------------------------------------ tokenbox


_LISTENING = re.compile(r"tokenbox listening address=(127\.0\.0\.1:\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _server_env(log: str) -> dict[str, str]:
    """The environment of tokenbox processes: ours without TOKENBOX_* variables (tokenbox
    would read TOKENBOX_URL/TOKEN or warn about TOKENBOX_BIN), plus the log filter and a short
    per-connection back-off after a failed refresh (1 s doubling instead of 15 s), so that a
    retry after Retry-After reaches the provider again within a test's time. (An environment
    variable rather than a file key: a tokenbox that does not know it only logs a warning.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENBOX_")}
    env["TOKENBOX_LOG"] = log
    env["TOKENBOX_REFRESH_BACKOFF_SECONDS"] = "1"
    return env


class Tokenbox:
    """The real tokenbox binary serving a fresh SQLite database on a loopback port.

    ``extra_config``: more top-level TOML keys (e.g. ``jwt_lifetime_seconds = 3``), which must
    not repeat the keys written here. Two service accounts are created: a superadmin
    (``superadmin_name``/``superadmin_token``, also usable as client credentials) and an admin.
    """

    def __init__(self, binary: Path, workdir: Path, provider: FakeProvider, extra_config: str = "") -> None:
        self.binary = binary
        self.workdir = workdir
        self.config = workdir / "tokenbox.toml"
        self.log = workdir / "tokenbox.log"
        self.config.write_text(
            f"""\
listen = "127.0.0.1:0"
database_url = "sqlite://{workdir}/tokenbox.db"
encryption_key_file = "{workdir}/encryption.key"
refresher_enabled = false
refresh_margin_seconds = 300
allow_insecure_loopback = true
{extra_config}

[connector_types.acme]
authorization_url = "{provider.url}/authorize"
token_url = "{provider.url}/token"
client_id = "acme-client"
client_secret = "acme-secret"
client_auth = "basic"

# Connector types whose provider is made to fail: tokenbox has a circuit breaker per connector
# type, so failures are kept away from the types the other tests expect to refresh.
[connector_types.downco]
authorization_url = "{provider.url}/authorize"
token_url = "{provider.url}/token"
client_id = "downco-client"
client_secret = "downco-secret"

[connector_types.flaky]
authorization_url = "{provider.url}/authorize"
token_url = "{provider.url}/token"
client_id = "flaky-client"
client_secret = "flaky-secret"

[connector_types.github]
client_id = "gh"
client_secret = "gh-secret"
token_url = "{provider.url}/token"
"""
        )
        self._log_file = open(self.log, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(binary), "--config", str(self.config), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=_server_env("info"),
            cwd=workdir,
        )
        self.url = self._wait_listening()
        self.superadmin_name = unique("extraction")
        self.superadmin_token = self.cli(
            "service-account", "create", self.superadmin_name, "--role", "superadmin"
        )
        self.admin_name = unique("backend")
        self.admin_token = self.cli("service-account", "create", self.admin_name, "--role", "admin")

    def _wait_listening(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = _ANSI.sub("", self.log.read_text(errors="replace"))
            found = _LISTENING.search(text)
            if found:
                return f"http://{found.group(1)}"
            if self.process.poll() is not None:
                raise RuntimeError(f"tokenbox exited with {self.process.returncode}:\n{text}")
            time.sleep(0.05)
        raise RuntimeError(f"tokenbox did not log its address within {timeout} s:\n{text}")

    def cli(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [str(self.binary), "--config", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.workdir,
            env=_server_env("warn"),
        )
        if done.returncode != 0:
            raise RuntimeError(f"tokenbox {' '.join(args)} failed: {done.stderr}")
        return done.stdout.strip()

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {token or self.admin_token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read() or b"null")

    def connect(self, app_id: str, connector_type: str, **token_set: Any) -> None:
        """Import a token set (``PUT /{app}/{type}/connection``) with the admin token."""
        status, body = self.request("PUT", f"/{app_id}/{connector_type}/connection", token_set)
        if status not in (200, 201):
            raise RuntimeError(f"import failed: {status} {body}")

    def connection(self, app_id: str, connector_type: str) -> dict[str, Any]:
        status, body = self.request("GET", f"/{app_id}/{connector_type}/connection")
        assert status == 200, body
        return body

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
