#!/usr/bin/env python3
"""Scheduled extraction job: for each app, get a token from tokenbox, call the provider's API
with it, and report per app: success, reauthorization_required (the app's tenant must reconnect)
or error. One app's failure never stops the others; the exit code is 1 when any app did not
succeed (2 on a usage error), 0 otherwise.

Configuration (command-line options win over the environment):

  TOKENBOX_URL, TOKENBOX_TOKEN    tokenbox and a superadmin service-account token
  --apps / EXTRACT_APPS           apps, comma- or space-separated; "app" or "app/connector_type"
  --apps-file / EXTRACT_APPS_FILE one app per line (same forms), '#' starts a comment
  --connector-type / EXTRACT_CONNECTOR_TYPE   default connector type (github)
  --api-base-url / PROVIDER_API_URL           provider API base URL (default: the api_base_url
                                              tokenbox serves with each token)
  --endpoint / EXTRACT_ENDPOINT               path called for each app (/user)
  --output-dir / EXTRACT_OUTPUT_DIR           where to write <app>.json (optional)
  --min-validity / EXTRACT_MIN_VALIDITY       seconds the token must stay valid (600)
  --max-retries / EXTRACT_MAX_RETRIES         retries of a 503 from tokenbox (3)
  --retry-budget / EXTRACT_RETRY_BUDGET       seconds one app may spend waiting on retries (60)
  --format / EXTRACT_REPORT_FORMAT            report on stdout: text (default) or json

The token client is tokenbox-client (clients/python); from a checkout of the repository it is
found without installing it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    import tokenbox_client
except ImportError:  # running from a checkout: use the client next door
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python" / "src"))
    import tokenbox_client

from tokenbox_client import ReauthorizationRequired, TokenboxClient, TokenboxError, TokenInfo

log = logging.getLogger("extract")

SUCCESS = "success"
REAUTHORIZATION_REQUIRED = "reauthorization_required"
ERROR = "error"


@dataclass
class AppResult:
    app_id: str
    connector_type: str
    status: str
    detail: str
    error_code: str | None = None
    records: int | None = None
    seconds: float = 0.0


class ProviderApiError(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--apps", action="append", default=None, help="apps (comma-separated; repeatable); env EXTRACT_APPS"
    )
    p.add_argument("--apps-file", default=env("EXTRACT_APPS_FILE"), help="file with one app per line")
    p.add_argument("--connector-type", default=env("EXTRACT_CONNECTOR_TYPE", "github"))
    p.add_argument("--api-base-url", default=env("PROVIDER_API_URL", ""))
    p.add_argument("--endpoint", default=env("EXTRACT_ENDPOINT", "/user"))
    p.add_argument("--output-dir", default=env("EXTRACT_OUTPUT_DIR"))
    p.add_argument("--min-validity", type=int, default=int(env("EXTRACT_MIN_VALIDITY", "600")))
    p.add_argument("--max-retries", type=int, default=int(env("EXTRACT_MAX_RETRIES", "3")))
    p.add_argument("--retry-budget", type=float, default=float(env("EXTRACT_RETRY_BUDGET", "60")))
    p.add_argument("--api-timeout", type=float, default=float(env("EXTRACT_API_TIMEOUT", "30")))
    p.add_argument("--format", choices=("text", "json"), default=env("EXTRACT_REPORT_FORMAT", "text"))
    return p.parse_args(argv)


def split_apps(text: str) -> list[str]:
    return [a for a in text.replace(",", " ").split() if a]


def load_apps(args: argparse.Namespace) -> list[str]:
    """--apps, else --apps-file (or EXTRACT_APPS_FILE), else EXTRACT_APPS; duplicates dropped."""
    apps: list[str] = []
    if args.apps:
        for chunk in args.apps:
            apps += split_apps(chunk)
    elif args.apps_file:
        for line in Path(args.apps_file).read_text().splitlines():
            apps += split_apps(line.split("#", 1)[0])
    else:
        apps = split_apps(os.environ.get("EXTRACT_APPS", ""))
    return list(dict.fromkeys(apps))


def call_api(base_url: str, endpoint: str, token: TokenInfo, timeout: float) -> Any:
    """Calls the provider's API with the credential tokenbox served: its ``headers`` (an OAuth
    bearer token, an API key, HTTP Basic: the job does not need to know which) and its ``query``
    parameters, at ``base_url`` (the option, else the ``api_base_url`` tokenbox serves)."""
    base_url = base_url or token.api_base_url or ""
    if not base_url:
        raise ProviderApiError(
            None, "no API base URL: tokenbox knows none for this connector type; set --api-base-url"
        )
    url = base_url.rstrip("/") + "/" + endpoint.lstrip("/")
    if token.query:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode(dict(token.query))
    headers = {
        "Accept": "application/json",
        "User-Agent": "tokenbox-extraction-example",
        **token.request_headers(),
    }
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            raise ProviderApiError(
                exc.code, f"provider API answered HTTP {exc.code} for {endpoint}"
            ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProviderApiError(None, f"provider API unreachable: {reason}") from None
    except ValueError:
        raise ProviderApiError(
            None, f"provider API answered something that is not JSON for {endpoint}"
        ) from None


def count_records(data: Any) -> int:
    if isinstance(data, list):
        return len(data)
    if isinstance(data, dict):
        for key in ("items", "data", "results", "records"):
            if isinstance(data.get(key), list):
                return len(data[key])
    return 1


def write_output(output_dir: str, app_id: str, connector_type: str, data: Any) -> None:
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{app_id}.{connector_type}.json"
    partial = target.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True))
    partial.replace(target)  # atomic: readers never see half a file


def extract_one(client: TokenboxClient, args: argparse.Namespace, entry: str) -> AppResult:
    app_id, _, connector_type = entry.partition("/")
    connector_type = connector_type or args.connector_type
    started = time.monotonic()

    def result(status: str, detail: str, **extra: Any) -> AppResult:
        return AppResult(
            app_id, connector_type, status, detail, seconds=round(time.monotonic() - started, 3), **extra
        )

    try:
        token = client.get_token(app_id, connector_type, min_validity=args.min_validity)
        try:
            data = call_api(args.api_base_url, args.endpoint, token, args.api_timeout)
        except ProviderApiError as exc:
            if exc.status != 401:
                raise
            # The provider rejected a token tokenbox thought valid (revoked, rotated elsewhere):
            # ask tokenbox for a new one, once.
            log.info("%s/%s: the provider rejected the token; forcing a refresh", app_id, connector_type)
            token = client.get_token(
                app_id, connector_type, min_validity=args.min_validity, force_refresh=True
            )
            data = call_api(args.api_base_url, args.endpoint, token, args.api_timeout)
        if args.output_dir:
            write_output(args.output_dir, app_id, connector_type, data)
        records = count_records(data)
        return result(SUCCESS, f"{records} record(s) from {args.endpoint}", records=records)
    except ReauthorizationRequired as exc:
        # tokenbox's message already says what happened and that the tenant must reconnect.
        return result(REAUTHORIZATION_REQUIRED, exc.message, error_code=exc.code)
    except TokenboxError as exc:
        return result(ERROR, f"tokenbox: {exc}", error_code=exc.code)
    except ProviderApiError as exc:
        return result(ERROR, str(exc), error_code="provider_api_error")
    except Exception as exc:  # one app's bug must not stop the others
        log.exception("%s/%s: unexpected failure", app_id, connector_type)
        return result(ERROR, f"unexpected {type(exc).__name__}: {exc}", error_code="unexpected")


def render_text(results: list[AppResult]) -> str:
    width_app = max([len("app")] + [len(f"{r.app_id}/{r.connector_type}") for r in results])
    width_status = max(len(s) for s in (SUCCESS, REAUTHORIZATION_REQUIRED, ERROR))
    lines = [f"{'app':<{width_app}}  {'status':<{width_status}}  detail"]
    for r in results:
        lines.append(
            f"{r.app_id + '/' + r.connector_type:<{width_app}}  {r.status:<{width_status}}  {r.detail}"
        )
    lines.append(summary(results))
    return "\n".join(lines)


def summary(results: list[AppResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in (SUCCESS, REAUTHORIZATION_REQUIRED, ERROR)}
    return (
        f"summary: {len(results)} app(s): {counts[SUCCESS]} succeeded, "
        f"{counts[REAUTHORIZATION_REQUIRED]} need reauthorization, {counts[ERROR]} failed"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    args = parse_args(argv)
    try:
        apps = load_apps(args)
    except OSError as exc:
        print(f"extract: cannot read the apps file: {exc}", file=sys.stderr)
        return 2
    if not apps:
        print(
            "extract: no apps: give --apps, --apps-file, EXTRACT_APPS or EXTRACT_APPS_FILE", file=sys.stderr
        )
        return 2
    try:
        client = TokenboxClient(max_retries=args.max_retries, retry_budget=args.retry_budget)
    except tokenbox_client.ConfigurationError as exc:
        print(f"extract: {exc.message}", file=sys.stderr)
        return 2

    results = []
    for entry in apps:
        outcome = extract_one(client, args, entry)
        log.info("%s/%s: %s (%s)", outcome.app_id, outcome.connector_type, outcome.status, outcome.detail)
        results.append(outcome)

    if args.format == "json":
        print(json.dumps({"results": [asdict(r) for r in results], "summary": summary(results)}, indent=2))
    else:
        print(render_text(results))
    return 0 if all(r.status == SUCCESS for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
