"""Schemathesis hooks for the tokenbox fuzz run (loaded through SCHEMATHESIS_HOOKS by fuzz.py).

- `before_generate_path_parameters`, `before_generate_query`: about three cases in four use
  valid, seeded ids (app ids, connector types, connect-link secrets) and valid query values
  (binb-token's min_validity/force_refresh, audit's filters) so that requests reach real
  handlers and refreshes; the rest keep schemathesis's own values (mostly invalid, which must
  get a 4xx).
- `after_call` / `after_network_error`: one line per request in FUZZ_REQUESTS_LOG, which fuzz.py
  counts (requests made, status histogram, 5xx, requests that got no response).
- `no_secret_leak` (a check, enabled with `--checks ...,no_secret_leak`): no response body or
  header may hold a stored secret, except the access token of the requested connection in the
  body of a 200 from GET /{app_id}/{connector_type}/binb-token.
- `before_generate_body`: PUT .../connection bodies often carry a refresh token (and sometimes an
  expired access token), so that refreshes also happen on connections the fuzzer imported.
- `filter_failure`, `filter_query`: tolerate two known server issues (KNOWN ISSUE 1 and 2 below)
  unless FUZZ_STRICT=1.

The secrets and the id pools come from FUZZ_STATE, a JSON file fuzz.py rewrites whenever its
token endpoint issues tokens: {"secrets": {value: {"kind", "owner"}}, "pool": {...}}.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse

from hypothesis import strategies as st

import schemathesis

STATE_PATH = os.environ["FUZZ_STATE"]
REQUESTS_LOG = os.environ["FUZZ_REQUESTS_LOG"]
LEAKS_LOG = os.environ["FUZZ_LEAKS_LOG"]
KNOWN_LOG = os.environ["FUZZ_KNOWN_LOG"]
STRICT = os.environ.get("FUZZ_STRICT") == "1"
BINB_TOKEN = "GET /{app_id}/{connector_type}/binb-token"
PUT_CONNECTION = "PUT /{app_id}/{connector_type}/connection"
# Every refresh token of this run starts with this (fuzz.py's and the ones added below): one may
# never appear in a response, whoever it belongs to.
REFRESH_TOKEN_PREFIX = "fuzz-rt-"
IMPORTED_REFRESH_TOKEN_PREFIX = REFRESH_TOKEN_PREFIX + "import-"

_lock = threading.Lock()
_state: dict = {"secrets": {}, "pool": {}}
_state_stamp: tuple | None = None
# Tokens issued for a refresh token the fuzzer imported itself have no known owner; the first
# connection that serves one claims it, and any other connection serving it later is a leak.
_claims: dict[str, str] = {}


def _load_state() -> dict:
    global _state, _state_stamp
    with _lock:
        st_ = os.stat(STATE_PATH)
        stamp = (st_.st_mtime_ns, st_.st_size, st_.st_ino)
        if stamp != _state_stamp:
            with open(STATE_PATH) as f:
                _state = json.load(f)
            _state_stamp = stamp
        return _state


def _append(path: str, record: dict) -> None:
    line = json.dumps(record) + "\n"
    with _lock, open(path, "a") as f:
        f.write(line)


# --- Valid ids, often ---------------------------------------------------------------------------


@schemathesis.hook
def before_generate_path_parameters(context, strategy):
    operation = context.operation
    if operation is None:
        return strategy
    pool = _load_state()["pool"]
    path = operation.path
    if path.startswith("/{app_id}/{connector_type}/"):
        valid = st.fixed_dictionaries(
            {
                # Seeded app ids (which have connections) three times in four, else any valid id.
                "app_id": _mostly(
                    st.sampled_from(pool["app_id"]),
                    st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z"),
                ),
                "connector_type": st.sampled_from(pool["connector_type"]),
            }
        )
    elif path == "/connect/{secret}":
        valid = st.fixed_dictionaries({"secret": st.sampled_from(pool["secret"])})
    else:
        return strategy
    return _mostly(valid, strategy)


@schemathesis.hook
def before_generate_query(context, strategy):
    operation = context.operation
    if operation is None:
        return strategy
    if operation.label == BINB_TOKEN:
        valid = st.fixed_dictionaries(
            {},
            optional={
                # Mostly below the tokens' lifetime (3600 s), so that refreshes succeed.
                "min_validity": st.one_of(st.integers(0, 4000), st.integers(0, 31_536_000)),
                # As strings: a Python bool would be sent as "True", which the API rejects (400).
                "force_refresh": st.sampled_from(["true", "false"]),
            },
        )
    elif operation.label == "GET /audit":
        valid = st.fixed_dictionaries(
            {},
            optional={
                "app_id": st.sampled_from(_load_state()["pool"]["app_id"]),
                "since": st.integers(0, 4_000_000_000),
                "limit": st.integers(1, 1000),
            },
        )
    else:
        return strategy
    return _mostly(valid, strategy)


@schemathesis.hook
def before_generate_body(context, strategy):
    """PUT .../connection: three bodies in four that are objects get a refresh token (fuzz-rt-…,
    which must never appear in a response), one in four of those an expired access token, so
    that binb-token refreshes connections the fuzzer imported itself, not only seeded ones."""
    operation = context.operation
    if operation is None or operation.label != PUT_CONNECTION:
        return strategy
    return st.tuples(strategy, st.integers(0, 3), st.binary(min_size=16, max_size=16)).map(_with_refresh_token)


def _with_refresh_token(drawn):
    body, n, raw = drawn
    if n == 0 or not isinstance(body, dict):
        return body
    body = {**body, "refresh_token": IMPORTED_REFRESH_TOKEN_PREFIX + raw.hex()}
    if n == 1:
        body.pop("expires_in", None)
        body["expires_at"] = 1
    return body


def _mostly(valid, generated):
    """Three cases in four from `valid`, else from `generated` (e.g. schemathesis's own strategy)."""
    return st.integers(min_value=0, max_value=3).flatmap(lambda n: generated if n == 0 else valid)


# --- Request accounting -------------------------------------------------------------------------


def _known_issue(case, response) -> bool:
    """KNOWN ISSUE 1 (reported to the team, not fixed here): a refresh of a connector type that has
    no client credentials configured (github, hubspot in this run: catalog types without
    client_id/client_secret) answers 502 `provider_error` ("connector type 'X' has no client
    credentials configured"), although no provider was called; a configuration problem, which
    the API elsewhere reports as 409 `connector_not_configured`. Reproduce: import an expired
    token set with a refresh token for <app>/github, then GET /<app>/github/binb-token.
    Tolerated so that the rest of the run stays useful; FUZZ_STRICT=1 makes it fail."""
    if STRICT or response.status_code != 502 or case.operation.label != BINB_TOKEN:
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    return body.get("error") == "provider_error" and "has no client credentials configured" in body.get(
        "message", ""
    )


I64_MAX = 2**63 - 1


@schemathesis.hook("filter_query")
def _skip_connections_overflow(context, query):
    """KNOWN ISSUE 2 (reported to the team, not fixed here): GET /connections?expiring_within=N
    computes `now_epoch() + N` unchecked (src/api/resources/connections.rs, filter_of), so an N
    above i64::MAX - now panics ("attempt to add with overflow") in a debug build: the connection
    is closed without a response. (A release build wraps around silently.) Reproduce:
    curl -H 'Authorization: Bearer <superadmin>' '<server>/connections?expiring_within=9223372036854775807'
    Those queries are not sent unless FUZZ_STRICT=1, so that the rest of the run stays useful."""
    if STRICT or context.operation is None or context.operation.label != "GET /connections":
        return True
    value = (query or {}).get("expiring_within") if isinstance(query, dict) else None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return True
    if I64_MAX - int(time.time()) - 86_400 < number <= I64_MAX:
        _append(KNOWN_LOG, {"known_issue": "connections_overflow", "query": {"expiring_within": str(value)}})
        return False
    return True


@schemathesis.hook
def after_call(context, case, response):
    record = {
        "operation": case.operation.label,
        "method": case.method,
        "path": urllib.parse.urlsplit(response.request.url).path,
        "status": response.status_code,
        "elapsed": round(response.elapsed, 4),
        "query": case.query,
        "role": os.environ.get("FUZZ_ROLE", "?"),
    }
    if response.status_code >= 500:
        record["body"] = response.content[:500].decode("utf-8", "replace")
        record["known_issue"] = _known_issue(case, response)
    _append(REQUESTS_LOG, record)


@schemathesis.hook
def after_network_error(context, case, request):
    _append(
        REQUESTS_LOG,
        {
            "operation": case.operation.label,
            "method": case.method,
            "path": urllib.parse.urlsplit(request.url).path,
            "status": None,
            "error": "no response (timeout or connection error)",
            "role": os.environ.get("FUZZ_ROLE", "?"),
        },
    )


@schemathesis.hook
def filter_failure(context, failure, case, response):
    # Drop only the known issue's 502; every other failure stays.
    return not (failure.code == "ST101" and _known_issue(case, response))


# --- No stored secret in any response -----------------------------------------------------------


@schemathesis.check
def no_secret_leak(ctx, response, case):
    """No response body or header holds a stored secret (tokens, client secret, bearer tokens,
    connect-link secrets, the encryption key), except the requested connection's access token in
    its `access_token` field and as the credential of its `headers` (or `query`), in
    the body of a 200 from GET /{app_id}/{connector_type}/binb-token."""
    secrets = _load_state()["secrets"]
    body = response.content.decode("utf-8", "replace")
    headers = "\n".join(f"{k}: {v}" for k, values in response.headers.items() for v in values)
    requested = None
    if case.operation.label == BINB_TOKEN and response.status_code == 200:
        params = case.path_parameters or {}
        requested = f"{params.get('app_id')}/{params.get('connector_type')}"
    problems = []
    for value, item in secrets.items():
        in_body, in_headers = value in body, value in headers
        if not (in_body or in_headers):
            continue
        where = " and ".join(w for w, hit in (("body", in_body), ("headers", in_headers)) if hit)
        if requested is not None and item["kind"] == "access_token" and in_body and not in_headers:
            owner = item["owner"]
            if owner is None:
                with _lock:
                    owner = _claims.setdefault(value, requested)
            served = _json_field(response.content, "access_token")
            if owner == requested and served == value and _only_where_served(response.content, value):
                continue
            problems.append(
                f"the access token of {owner} was served for {requested} (in the {where})"
                if owner != requested
                else f"the access token of {owner} appears outside its access_token field"
            )
            continue
        problems.append(f"a {item['kind']} (owner: {item['owner'] or '-'}) is in the response {where}")
    if REFRESH_TOKEN_PREFIX in body or REFRESH_TOKEN_PREFIX in headers:
        problems.append(f"a refresh token ({REFRESH_TOKEN_PREFIX}…) is in the response")
    if problems:
        _append(
            LEAKS_LOG,
            {
                "operation": case.operation.label,
                "path": urllib.parse.urlsplit(response.request.url).path,
                "status": response.status_code,
                "problems": sorted(problems),
            },
        )
        raise AssertionError("stored secret in the response: " + "; ".join(sorted(problems)))


def _only_where_served(content: bytes, value: str) -> bool:
    """The token appears once in `access_token`, and otherwise only as the credential of the
    `headers` a job sends to the provider (`Authorization: Bearer <token>`, or a key header or
    query parameter, the whole value or after a prefix), nowhere else."""
    try:
        data = json.loads(content)
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    rest = {k: v for k, v in data.items() if k not in ("headers", "query")}
    if json.dumps(rest).count(value) != 1:
        return False
    for field in ("headers", "query"):
        carried = data.get(field) or {}
        if not isinstance(carried, dict):
            return False
        for name, v in carried.items():
            if value in str(name) or (value in str(v) and not str(v).endswith(value)):
                return False
    return True


def _json_field(content: bytes, name: str):
    try:
        data = json.loads(content)
    except ValueError:
        return None
    return data.get(name) if isinstance(data, dict) else None
