"""Fuzz a real tokenbox server with schemathesis against its own OpenAPI document.

Called by run-fuzz.sh (inside tests/fuzz/.venv). Steps:

1. start a tiny OAuth token endpoint (a thread of this process) that issues random tokens and
   remembers which connection each one belongs to;
2. start `tokenbox serve` on 127.0.0.1:0 in a temporary directory, with a config whose `acme`
   connector type points at that endpoint;
3. create a superadmin, an admin and a scoped service account (CLI, before the server starts,
   which then knows them at once), seed connections with known secret
   tokens (some expired, so refreshes happen), a connect link, and one connection made through
   the whole signup flow (connect link -> OAuth callback -> code exchange);
4. run `st run` against /openapi.json with the hooks of hooks.py (valid ids often, a request
   counter, and the `no_secret_leak` check) plus `not_a_server_error`, status-code,
   response-schema and content-type conformance and a request timeout, once per caller:
   superadmin, scoped account, no credential;
5. stop the server with SIGTERM, scan its log for secrets, print a summary.

Exit code 0 only when: schemathesis passed, at least --min-requests requests were made, no
response was a 5xx (except a known issue, see hooks.py, unless FUZZ_STRICT=1), no response and
no log line held a stored secret, no request hung, and the server stopped cleanly.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent


def log(message: str) -> None:
    print(f"[fuzz] {message}", flush=True)


def new_secret(kind: str) -> str:
    # Hex only: unchanged by JSON, HTML or URL escaping, so a plain substring search finds it.
    return f"fuzz-{kind}-{secrets.token_hex(20)}"


class Secrets:
    """Every stored secret: value -> {"kind", "owner"}; written to a JSON file for the hooks.

    kind: access_token, refresh_token, client_secret, bearer, link_secret, encryption_key.
    owner: "app_id/connector_type" for tokens of a known connection, else null.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.items: dict[str, dict] = {}
        self.pool: dict[str, list[str]] = {}

    def add(self, value: str, kind: str, owner: str | None = None) -> None:
        with self.lock:
            self.items[value] = {"kind": kind, "owner": owner}
            self._write()

    def owner_of(self, value: str) -> str | None:
        with self.lock:
            item = self.items.get(value)
            return item["owner"] if item else None

    def set_pool(self, pool: dict[str, list[str]]) -> None:
        with self.lock:
            self.pool = pool
            self._write()

    def all(self) -> dict[str, dict]:
        with self.lock:
            return dict(self.items)

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"secrets": self.items, "pool": self.pool}))
        os.replace(tmp, self.path)


class TokenEndpoint:
    """The provider's token endpoint: answers every good grant with a new random token set."""

    def __init__(self, store: Secrets, client_id: str, client_secret: str) -> None:
        self.store = store
        self.client_id = client_id
        self.client_secret = client_secret
        self.codes: dict[str, str] = {}  # authorization code -> owner
        self.calls: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                endpoint.count("GET " + self.path.split("?")[0])
                self.reply(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8", "replace")
                if self.path.split("?")[0] != "/token":
                    endpoint.count("POST other")
                    self.reply(404, {"error": "not_found"})
                    return
                form = {k: v[-1] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}
                status, body = endpoint.grant(self.headers.get("Authorization"), form)
                self.reply(status, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, what: str) -> None:
        with self.lock:
            self.calls[what] += 1

    def client_ok(self, authorization: str | None, form: dict) -> bool:
        cid, csecret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:]).decode()
                user, _, password = decoded.partition(":")
                cid, csecret = urllib.parse.unquote(user), urllib.parse.unquote(password)
            except Exception:
                return False
        return cid == self.client_id and csecret == self.client_secret

    def issue(self, owner: str | None) -> dict:
        access, refresh = new_secret("at"), new_secret("rt")
        self.store.add(access, "access_token", owner)
        self.store.add(refresh, "refresh_token", owner)
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": 3600,
            "refresh_token": refresh,
        }

    def grant(self, authorization: str | None, form: dict) -> tuple[int, dict]:
        grant_type = form.get("grant_type", "")
        if not self.client_ok(authorization, form):
            self.count(f"{grant_type}: invalid_client")
            return 401, {"error": "invalid_client"}
        if grant_type == "refresh_token":
            presented = form.get("refresh_token", "")
            # A refresh token the fuzzer imported itself has no known owner: its new tokens get
            # owner null and the leak check ties them to the first connection that serves them.
            owner = self.store.owner_of(presented)
            self.count("refresh_token: issued" + ("" if owner else " (unknown owner)"))
            return 200, self.issue(owner)
        if grant_type == "authorization_code":
            with self.lock:
                owner = self.codes.pop(form.get("code", ""), None)
            if owner is None:
                self.count("authorization_code: invalid_grant")
                return 400, {"error": "invalid_grant"}
            self.count("authorization_code: issued")
            return 200, self.issue(owner)
        self.count(f"{grant_type or '-'}: unsupported_grant_type")
        return 400, {"error": "unsupported_grant_type"}


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        log("FAIL: " + message)
        self.items.append(message)


def die_with_parent() -> None:
    """In a child (preexec_fn): get SIGTERM when this driver dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def on_sigterm(signum, frame) -> None:
    # A CI job cancelled: unwind through the `finally` blocks, which stop the children.
    raise SystemExit(128 + signum)


def scrubbed_env() -> dict[str, str]:
    # TOKENBOX_* variables override the config file (TOKENBOX_DATABASE_URL in CI would point the
    # server at another database), so none is inherited.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENBOX_")}
    env["TOKENBOX_LOG"] = "info"
    return env


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--out", required=True, help="directory for logs and reports")
    parser.add_argument("--min-requests", type=int, default=2000)
    parser.add_argument("--max-examples", type=int, default=int(os.environ.get("FUZZ_MAX_EXAMPLES", "200")))
    # One worker: schemathesis's workers are threads, and with them CPython 3.11's ast module
    # sometimes fails inside hypothesis ("AST constructor recursion depth mismatch",
    # CPython gh-106905); a second worker gains nothing on 2 cores anyway (the GIL).
    parser.add_argument("--workers", default=os.environ.get("FUZZ_WORKERS", "1"))
    parser.add_argument("--seed", default=os.environ.get("FUZZ_SEED"))
    parser.add_argument("--request-timeout", type=float, default=10.0)
    parser.add_argument("--st-timeout", type=float, default=float(os.environ.get("FUZZ_ST_TIMEOUT", "600")))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)

    started = time.monotonic()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix="tokenbox-fuzz-"))
    failures = Failures()
    store = Secrets(out / "state.json")
    client_id, client_secret = "acme-client", new_secret("client-secret")
    store.add(client_secret, "client_secret")
    # The same secret as an HTTP Basic credential would carry it.
    store.add(base64.b64encode(f"{client_id}:{client_secret}".encode()).decode(), "client_secret")
    endpoint = TokenEndpoint(store, client_id, client_secret)
    endpoint.start()
    server: subprocess.Popen | None = None
    pump: LogPump | None = None
    role_rcs: dict[str, int] = {}
    st_rc, seeding_lines = 1, 0
    server_log_path = out / "server.log"
    server_log = open(server_log_path, "wb")
    try:
        config = tmp / "tokenbox.toml"
        provider = f"http://127.0.0.1:{endpoint.port}"
        config.write_text(
            f"""listen = "127.0.0.1:0"
database_url = "sqlite://{tmp}/tokenbox.db"
encryption_key_file = "{tmp}/encryption.key"
refresher_enabled = false
allow_insecure_loopback = true
rate_limit_per_second = 0
allowed_return_urls = ["https://app.example.com/connected"]

[connector_types.acme]
authorization_url = "{provider}/authorize"
token_url = "{provider}/token"
client_id = "{client_id}"
client_secret = "{client_secret}"
"""
        )
        env = scrubbed_env()
        cli = [args.bin, "--config", str(config)]

        def account(name: str, role: str, *scope: str) -> str:
            result = subprocess.run(
                cli + ["service-account", "create", name, "--role", role, *scope],
                env=env, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            )
            if result.returncode != 0:
                raise SystemExit(f"service-account create {name} failed: {result.stderr}")
            token = result.stdout.strip()
            if not token or "\n" in token:
                raise SystemExit(f"service-account create {name}: unexpected output")
            store.add(token, "bearer")
            return token

        # The accounts exist before the server starts, so it knows them from its first request.
        superadmin = account("fuzz-superadmin", "superadmin")
        admin = account("fuzz-admin", "admin")
        limited = account("fuzz-limited", "superadmin", "--apps", "tenant-1,tenant-2", "--connector-types", "acme")
        # The key file the first command created is a secret too.
        for line in (tmp / "encryption.key").read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                store.add(line, "encryption_key")
        server = subprocess.Popen(
            cli + ["serve"], env=env, cwd=tmp, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        pump = LogPump(server, server_log)
        base = pump.wait_for_address(deadline_seconds=60)
        log(f"server pid {server.pid} at {base}; token endpoint at {provider}")
        seed(base, admin, superadmin, store, endpoint, failures)

        if failures.items:
            raise SystemExit("seeding failed")
        seeding_lines = count_access_lines(server_log_path.read_text(errors="replace"))
        # One run per kind of caller; the OpenAPI document must be truthful for each.
        st_rc = 0
        for role, token, examples in (
            ("superadmin", superadmin, args.max_examples),
            ("limited", limited, max(1, args.max_examples // 4)),
            ("none", None, max(1, args.max_examples // 4)),
        ):
            rc = run_schemathesis(args, base, token, out, role, examples)
            role_rcs[role] = rc
            st_rc = st_rc or rc
    finally:
        server_rc = stop_server(server, failures)
        if pump is not None:
            pump.join(timeout=30)
        endpoint.stop()
        server_log.close()
        if os.environ.get("FUZZ_KEEP_TMP") != "1":
            shutil.rmtree(tmp, ignore_errors=True)

    return summarize(
        args, out, store, endpoint, failures, st_rc, server_rc, seeding_lines, time.monotonic() - started, role_rcs
    )


def count_access_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if "tokenbox::access" in line)


class LogPump:
    """Copies the server's output to its log file, line by line, and tells when the server
    logged the address it listens on (or ended its output, i.e. exited)."""

    PATTERN = re.compile(r"tokenbox listening address=(127\.0\.0\.1:\d+)")
    ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def __init__(self, server: subprocess.Popen, sink) -> None:
        self.server = server
        self.sink = sink
        self.address: str | None = None
        self.decided = threading.Event()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.server.stdout is not None
        for line in iter(self.server.stdout.readline, b""):
            self.sink.write(line)
            self.sink.flush()
            if self.address is None:
                match = self.PATTERN.search(self.ANSI.sub("", line.decode(errors="replace")))
                if match:
                    self.address = "http://" + match.group(1)
                    self.decided.set()
        self.decided.set()  # end of output: the server exited

    def wait_for_address(self, deadline_seconds: float) -> str:
        """Blocks until the address is logged; the deadline only guards against a hang."""
        if not self.decided.wait(timeout=deadline_seconds):
            raise SystemExit(f"the server did not log its address within {deadline_seconds:.0f} s")
        if self.address is None:
            self.server.wait(timeout=30)
            raise SystemExit(f"the server exited with {self.server.returncode} before listening (see server.log)")
        return self.address

    def join(self, timeout: float) -> None:
        self.thread.join(timeout=timeout)


def seed(base: str, admin: str, superadmin: str, store: Secrets, endpoint: TokenEndpoint, failures: Failures) -> None:
    session = requests.Session()
    as_admin = {"Authorization": f"Bearer {admin}"}
    as_super = {"Authorization": f"Bearer {superadmin}"}

    # The accounts were created before the server started: both work at once.
    a = session.get(f"{base}/connector-types", headers=as_admin, timeout=10).status_code
    s = session.get(f"{base}/audit", headers=as_super, timeout=10).status_code
    if a != 200 or s != 200:
        raise SystemExit(f"the service accounts are not accepted (admin {a}, superadmin {s})")

    connections = [
        # app_id, connector_type, expired?
        ("acme", "acme", False),
        ("acme", "github", False),
        ("tenant-1", "acme", True),
        ("tenant-1", "github", False),
        ("tenant-2", "acme", True),
        ("tenant-3", "acme", False),
        ("tenant-3", "github", False),
    ]
    for app, ct, expired in connections:
        owner = f"{app}/{ct}"
        access, refresh = new_secret("at"), new_secret("rt")
        store.add(access, "access_token", owner)
        store.add(refresh, "refresh_token", owner)
        body = {"access_token": access, "refresh_token": refresh, "scope": "read write"}
        body.update({"expires_at": 1} if expired else {"expires_in": 3600})
        if app == "tenant-3":
            body["metadata"] = {"region": "eu"}
        r = session.put(f"{base}/{app}/{ct}/connection", headers=as_admin, json=body, timeout=10)
        if r.status_code != 201:
            failures.add(f"seeding PUT /{app}/{ct}/connection: {r.status_code} {r.text[:200]}")

    # A refresh through the token endpoint works (tenant-1/acme is expired).
    r = session.get(f"{base}/tenant-1/acme/binb-token", headers=as_super, timeout=15)
    token = r.json().get("access_token") if r.status_code == 200 else None
    if token is None or store.owner_of(token) != "tenant-1/acme":
        failures.add(f"seeding: the refresh of tenant-1/acme did not serve a new token: {r.status_code}")

    # The connect link the fuzzer may use (its secret is the last path segment of its URL).
    r = session.post(f"{base}/acme/acme/connect-links", headers=as_admin, json={}, timeout=10)
    if r.status_code != 201:
        failures.add(f"seeding POST /acme/acme/connect-links: {r.status_code} {r.text[:200]}")
        return
    link_secret = urllib.parse.urlsplit(r.json()["url"]).path.rstrip("/").rsplit("/", 1)[-1]
    store.add(link_secret, "link_secret")

    # A connection made through the whole signup: link -> page -> 303 -> callback -> code exchange.
    r = session.post(f"{base}/tenant-4/acme/connect-links", headers=as_admin, json={}, timeout=10)
    used_secret = urllib.parse.urlsplit(r.json()["url"]).path.rstrip("/").rsplit("/", 1)[-1]
    store.add(used_secret, "link_secret")
    page = session.get(f"{base}/connect/{used_secret}", timeout=10)
    start = session.post(f"{base}/connect/{used_secret}", allow_redirects=False, timeout=10)
    location = urllib.parse.urlsplit(start.headers.get("Location", ""))
    query = dict(urllib.parse.parse_qsl(location.query))
    if page.status_code != 200 or start.status_code != 303 or "state" not in query:
        failures.add(f"seeding signup: page {page.status_code}, start {start.status_code} {start.headers}")
        return
    code = secrets.token_hex(16)
    with endpoint.lock:
        endpoint.codes[code] = "tenant-4/acme"
    done = session.get(
        query["redirect_uri"], params={"code": code, "state": query["state"]},
        allow_redirects=False, timeout=15,
    )
    check = session.get(f"{base}/tenant-4/acme/connection", headers=as_admin, timeout=10)
    if done.status_code != 200 or check.status_code != 200:
        failures.add(f"seeding signup: callback {done.status_code}, connection {check.status_code}")

    store.set_pool({
        "app_id": ["acme", "tenant-1", "tenant-2", "tenant-3", "tenant-4", "tenant-5"],
        # acme (twice: more weight): configured, refreshes reach the token endpoint; github, hubspot: catalog types
        # without client credentials here; no-such-type: unknown.
        "connector_type": ["acme", "acme", "github", "hubspot", "no-such-type"],
        "secret": [link_secret, used_secret],
    })
    log(f"seeded {len(connections)} imported connections, 1 signup connection, 2 connect links")
    selftest = os.environ.get("FUZZ_SELFTEST", "")
    if selftest in ("canary", "cross"):
        # Proves that the leak checks bite; the run must fail. canary: a "secret" the server does
        # show (an app id: in bodies and in its log). cross: tenant-3/acme's access token is
        # declared to belong to acme/acme, so binb-token for tenant-3/acme looks like a leak.
        if selftest == "canary":
            store.add("tenant-3", "selftest_canary")
        else:
            r = session.get(f"{base}/tenant-3/acme/binb-token", headers=as_super, timeout=15)
            store.add(r.json()["access_token"], "access_token", "acme/acme")
        log(f"FUZZ_SELFTEST={selftest}: this run must FAIL")


# Besides "no 5xx" and "no leak": every status code, response body and content type must be
# the ones the OpenAPI document declares for the operation.
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "response_schema_conformance",
    "content_type_conformance",
    "no_secret_leak",
])


def run_schemathesis(args, base: str, token: str | None, out: Path, role: str, max_examples: int) -> int:
    """One schemathesis run as `role` (its bearer token, or none at all)."""
    st = Path(sys.executable).parent / "st"
    cmd = [str(st), "run", f"{base}/openapi.json"]
    if token is not None:
        cmd += ["--header", f"Authorization: Bearer {token}"]
    cmd += [
        "--checks", CHECKS,
        "--request-timeout", str(args.request_timeout),
        "--max-examples", str(max_examples),
        "--workers", str(args.workers),
        "--phases", "examples,coverage,fuzzing,stateful",
        "--mode", "all",
        # Never follow a redirect: a Location may lead off this machine (return_to, providers).
        "--max-redirects", "0",
        "--generation-database", "none",
        "--suppress-health-check", "filter_too_much,too_slow",
        "--report", "junit,ndjson",
        "--report-dir", str(out / f"schemathesis-report-{role}"),
        "--no-color",
    ]
    if args.seed:
        cmd += ["--seed", str(args.seed)]
    # Extra arguments for a local investigation, e.g. FUZZ_ST_ARGS="--include-method DELETE".
    cmd += shlex.split(os.environ.get("FUZZ_ST_ARGS", ""))
    env = dict(os.environ)
    env.update({
        "SCHEMATHESIS_HOOKS": str(HERE / "hooks.py"),
        "FUZZ_STATE": str(out / "state.json"),
        "FUZZ_REQUESTS_LOG": str(out / "requests.jsonl"),
        "FUZZ_LEAKS_LOG": str(out / "leaks.jsonl"),
        "FUZZ_KNOWN_LOG": str(out / "known-issues.jsonl"),
        "FUZZ_ROLE": role,
    })
    printable = " ".join(c if token is None or token not in c else "'Authorization: Bearer ***'" for c in cmd)
    log(f"running as {role}: SCHEMATHESIS_HOOKS=tests/fuzz/hooks.py {printable}")
    role_started = time.monotonic()
    with open(out / f"schemathesis-{role}.log", "wb") as st_log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=out, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        # The hard bound of the run: schemathesis is killed after --st-timeout seconds.
        timer = threading.Timer(args.st_timeout, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for chunk in iter(lambda: proc.stdout.readline(), b""):
                st_log.write(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc < 0:
        log(f"schemathesis was killed after {args.st_timeout:.0f} s")
    log(f"run as {role}: exit code {rc} after {time.monotonic() - role_started:.0f} s")
    return rc


def stop_server(server: subprocess.Popen | None, failures: Failures) -> int | None:
    if server is None:
        return None
    if server.poll() is not None:
        failures.add(f"the server had exited early with {server.returncode}")
        return server.returncode
    server.send_signal(signal.SIGTERM)
    try:
        return server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        failures.add("the server did not stop within 30 s of SIGTERM")
        return None


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(args, out: Path, store: Secrets, endpoint: TokenEndpoint, failures: Failures,
              st_rc: int, server_rc: int | None, seeding_lines: int, elapsed: float,
              role_rcs: dict[str, int]) -> int:
    requests_log = read_jsonl(out / "requests.jsonl")
    leaks = read_jsonl(out / "leaks.jsonl")
    server_text = (out / "server.log").read_text(errors="replace")
    access = [line for line in server_text.splitlines() if "tokenbox::access" in line]

    made = [r for r in requests_log if r.get("status") is not None]
    network_errors = [r for r in requests_log if r.get("status") is None]
    statuses = collections.Counter(r["status"] for r in made)
    by_operation = collections.Counter(r["operation"] for r in made)
    server_errors = [r for r in made if r["status"] >= 500]
    known = [r for r in server_errors if r.get("known_issue")]
    strict = os.environ.get("FUZZ_STRICT") == "1"
    unexpected_5xx = server_errors if strict else [r for r in server_errors if not r.get("known_issue")]
    outcomes = collections.Counter(m.group(1) for m in (re.search(r'outcome="?([a-z_]+)', l) for l in access) if m)
    refreshed = sum(1 for l in access if "refreshed=true" in l)

    print()
    print("=" * 72)
    print("tokenbox fuzz summary")
    print("=" * 72)
    print(f"time: {elapsed:.0f} s; schemathesis exit code {st_rc}; server exit code {server_rc}")
    served = len(access) - seeding_lines
    print(f"requests made by schemathesis: {len(made)} (hooks) / {served} (server access log); "
          f"at least {args.min_requests} required; network errors/timeouts: {len(network_errors)}")
    print("status codes: " + ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items())))
    by_role = collections.Counter(r.get("role", "?") for r in made)
    print("per role: " + ", ".join(f"{role}: {by_role[role]} requests (exit code {rc})" for role, rc in role_rcs.items()))
    print("per operation: " + ", ".join(f"{op}: {n}" for op, n in sorted(by_operation.items())))
    print("server outcomes: " + ", ".join(f"{o}: {n}" for o, n in sorted(outcomes.items())) + f"; refreshed=true: {refreshed}")
    print("token endpoint: " + ", ".join(f"{k}: {n}" for k, n in sorted(endpoint.calls.items())))
    print(f"secrets tracked: {len(store.all())}")

    for role, rc in role_rcs.items():
        if rc != 0:
            failures.add(f"schemathesis as {role} reported failures (exit code {rc}); see its output above")
        if by_role[role] == 0:
            failures.add(f"no request was made as {role}")
    if min(len(made), served) < args.min_requests:
        failures.add(f"only {min(len(made), served)} requests were made, fewer than {args.min_requests}")
    for r in network_errors[:10]:
        failures.add(f"no response (hang or network error): {r['operation']} {r.get('error')}")
    for r in unexpected_5xx[:20]:
        failures.add(f"5xx: {r['method']} {r['path']} -> {r['status']} {r.get('body', '')[:200]}")
    if known and not strict:
        print(f"KNOWN ISSUE 1 tolerated ({len(known)} responses; FUZZ_STRICT=1 makes them fail): "
              "a refresh of a connector type without client credentials answers 502 provider_error, e.g. "
              f"{known[0]['method']} {known[0]['path']} -> {known[0]['status']} {known[0].get('body', '')[:200]}")
    skipped = read_jsonl(out / "known-issues.jsonl")
    if skipped:
        print(f"KNOWN ISSUE 2 avoided ({len(skipped)} generated queries not sent; FUZZ_STRICT=1 sends them): "
              "GET /connections?expiring_within=N with now + N beyond i64 panics the server "
              f"(overflow), e.g. expiring_within={skipped[0]['query']['expiring_within']}")
    for leak in {json.dumps(l, sort_keys=True) for l in leaks}:
        failures.add(f"secret in a response: {leak}")
    for value, item in store.all().items():
        if value in server_text:
            failures.add(f"the server log contains a {item['kind']} (owner {item['owner']})")
    if server_rc not in (0, None):
        failures.add(f"the server exited with {server_rc} after SIGTERM")

    print("-" * 72)
    if failures.items:
        print(f"FAILED: {len(failures.items)} problem(s):")
        for f in failures.items:
            print("  - " + f)
        print(f"logs and reports: {out}")
        return 1
    tolerated = f" apart from {len(known)} of known issue 1" if known and not strict else ""
    print(f"PASSED: {len(made)} requests, no 5xx{tolerated}, no hang, no secret in any response or in the server log")
    print(f"logs and reports: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
