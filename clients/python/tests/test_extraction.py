"""The scheduled extraction example (examples/extraction/) run as a subprocess against the real
tokenbox and a fake provider API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from fakes import INVALID_GRANT, ISSUE, FakeProvider, Reply, Tokenbox, down, unique

EXAMPLE = REPO_ROOT / "examples" / "extraction"
SCRIPT = EXAMPLE / "extract.py"


def run_job(
    tokenbox: Tokenbox, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TOKENBOX_", "EXTRACT_", "PROVIDER_"))
    }
    full_env.update({"TOKENBOX_URL": tokenbox.url, "TOKENBOX_TOKEN": tokenbox.superadmin_token})
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
        stdin=subprocess.DEVNULL,
    )


def three_apps(tokenbox: Tokenbox, provider: FakeProvider) -> tuple[str, str, str]:
    """One healthy app, one whose grant was revoked, one whose provider is down."""
    healthy, revoked, down_app = unique("alpha"), unique("beta"), unique("gamma")
    tokenbox.connect(
        healthy, "acme", access_token=f"{healthy}~at0", refresh_token=f"{healthy}~rt0", expires_in=3600
    )
    provider.accept(f"{healthy}~at0", healthy)
    expired = int(time.time()) - 60
    provider.plan(f"{revoked}~rt0", INVALID_GRANT)
    tokenbox.connect(
        revoked, "acme", access_token=f"{revoked}~at0", refresh_token=f"{revoked}~rt0", expires_at=expired
    )
    provider.plan(f"{down_app}~rt0", down(retry_after=1))
    tokenbox.connect(
        down_app,
        "downco",
        access_token=f"{down_app}~at0",
        refresh_token=f"{down_app}~rt0",
        expires_at=expired,
    )
    return healthy, revoked, down_app


def test_report_for_a_healthy_a_revoked_and_a_down_app(
    tokenbox: Tokenbox, provider: FakeProvider, tmp_path: Path
) -> None:
    healthy, revoked, down_app = three_apps(tokenbox, provider)
    done = run_job(
        tokenbox,
        "--apps",
        f"{healthy},{revoked}",
        "--apps",
        f"{down_app}/downco",  # its provider (a connector type of its own) is down
        "--connector-type",
        "acme",
        "--api-base-url",
        f"{provider.url}/api",
        "--output-dir",
        str(tmp_path / "out"),
        "--max-retries",
        "1",
    )
    print(done.stdout)  # the per-app report (pytest -s / -rP shows it)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["app", "status", "detail"]
    rows = {line.split()[0]: line.split(None, 2) for line in lines[1:-1]}
    assert rows[f"{healthy}/acme"][1] == "success"
    assert "2 record(s) from /user" in rows[f"{healthy}/acme"][2]
    assert rows[f"{revoked}/acme"][1] == "reauthorization_required"
    assert "reconnect" in rows[f"{revoked}/acme"][2]
    assert rows[f"{down_app}/downco"][1] == "error"
    assert "provider_unavailable" in rows[f"{down_app}/downco"][2]
    assert lines[-1] == "summary: 3 app(s): 1 succeeded, 1 need reauthorization, 1 failed"
    # The failures did not stop the loop, and the healthy app's data was written.
    written = json.loads((tmp_path / "out" / f"{healthy}.acme.json").read_text())
    assert written["login"] == healthy
    # The down provider was retried: tokenbox's 503 Retry-After was honoured once by the client.
    assert "retry 1/1" in done.stderr
    assert [r["token"] for r in provider.api_requests if r["token"].startswith(healthy)] == [f"{healthy}~at0"]


def test_json_report_apps_file_and_environment(
    tokenbox: Tokenbox, provider: FakeProvider, tmp_path: Path
) -> None:
    one, two = unique("delta"), unique("epsilon")
    for app in (one, two):
        tokenbox.connect(app, "github", access_token=f"{app}~gho")
        provider.accept(f"{app}~gho", app)
    apps_file = tmp_path / "apps.txt"
    apps_file.write_text(f"# apps\n{one}   # first\n\n{two}/github\n")
    done = run_job(
        tokenbox,
        "--format",
        "json",
        env={
            "EXTRACT_APPS_FILE": str(apps_file),
            "PROVIDER_API_URL": f"{provider.url}/api",
            "EXTRACT_ENDPOINT": "/orgs",
        },
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(r["app_id"], r["connector_type"], r["status"]) for r in report["results"]] == [
        (one, "github", "success"),
        (two, "github", "success"),
    ]
    assert report["summary"] == "summary: 2 app(s): 2 succeeded, 0 need reauthorization, 0 failed"
    assert {r["path"] for r in provider.api_requests if r["token"] in (f"{one}~gho", f"{two}~gho")} == {
        "/api/orgs"
    }


def test_a_rejected_token_is_force_refreshed_once_and_api_errors_are_reported(
    tokenbox: Tokenbox, provider: FakeProvider
) -> None:
    rejected, broken = unique("zeta"), unique("eta")
    provider.plan(f"{rejected}~rt0", ISSUE)
    tokenbox.connect(
        rejected, "acme", access_token=f"{rejected}~at0", refresh_token=f"{rejected}~rt0", expires_in=3600
    )
    # rejected's token is unknown to the API (revoked at the provider): 401, then tokenbox
    # issues a new one on force_refresh.
    tokenbox.connect(broken, "acme", access_token=f"{broken}~at0", expires_in=3600)
    provider.api_plan(f"{broken}~at0", Reply(500, {"message": "boom"}))
    done = run_job(
        tokenbox,
        "--connector-type",
        "acme",
        "--api-base-url",
        f"{provider.url}/api",
        env={"EXTRACT_APPS": f"{rejected} {broken}"},
    )
    print(done.stdout)
    assert done.returncode == 1
    assert len(provider.refreshes(f"{rejected}~")) == 1
    rows = {line.split()[0]: line.split(None, 2) for line in done.stdout.splitlines()[1:-1]}
    assert rows[f"{rejected}/acme"][1] == "success"
    assert rows[f"{broken}/acme"][1] == "error" and "HTTP 500" in rows[f"{broken}/acme"][2]


def test_usage_errors_exit_2(tokenbox: Tokenbox) -> None:
    done = run_job(tokenbox)
    assert done.returncode == 2 and "no apps" in done.stderr
    done = run_job(tokenbox, "--apps", "a", env={"TOKENBOX_TOKEN": ""})
    assert done.returncode == 2 and "TOKENBOX_TOKEN" in done.stderr


@pytest.mark.skipif(not shutil.which("flock"), reason="flock (util-linux) is not installed")
def test_the_cron_line_runs_the_job(tokenbox: Tokenbox, provider: FakeProvider, tmp_path: Path) -> None:
    """The /etc/cron.d line, with its paths moved to a temporary directory, run by /bin/sh."""
    app = unique("theta")
    tokenbox.connect(app, "github", access_token=f"{app}~gho")
    provider.accept(f"{app}~gho", app)
    lines = [
        ln
        for ln in (EXAMPLE / "tokenbox-extraction.cron").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 6)
    assert len(fields) == 7 and fields[5] == "extraction", "five time fields, a user, a command"
    env_file = tmp_path / "extraction.env"
    env_file.write_text(
        (EXAMPLE / "extraction.env.example")
        .read_text()
        .replace("http://127.0.0.1:8080", tokenbox.url)
        .replace(
            "replace-with-the-output-of-tokenbox-service-account-create-extraction--role-superadmin",
            tokenbox.superadmin_token,
        )
        .replace("https://api.github.com", f"{provider.url}/api")
        .replace("/etc/tokenbox-extraction/apps.txt", str(tmp_path / "apps.txt"))
        .replace("/var/lib/tokenbox-extraction", str(tmp_path / "out"))
    )
    (tmp_path / "apps.txt").write_text(f"{app}\n")
    (tmp_path / "log").mkdir()
    command = (
        fields[6]
        .replace("/etc/tokenbox-extraction/extraction.env", str(env_file))
        .replace("/opt/tokenbox", str(REPO_ROOT))
        .replace("/usr/bin/python3", sys.executable)
        .replace("/tmp/tokenbox-extraction.lock", str(tmp_path / "lock"))
        .replace("/var/log/tokenbox-extraction", str(tmp_path / "log"))
    )
    clean_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TOKENBOX_", "EXTRACT_", "PROVIDER_"))
    }
    done = subprocess.run(["/bin/sh", "-c", command], env=clean_env, timeout=120, stdin=subprocess.DEVNULL)
    log = (tmp_path / "log" / "extract.log").read_text()
    assert done.returncode == 0, log
    assert f"{app}/github" in log and "1 succeeded" in log
    assert (tmp_path / "out" / f"{app}.github.json").exists()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_systemd_units_verify(tmp_path: Path) -> None:
    for name in ("tokenbox-extraction.service", "tokenbox-extraction.timer"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    done = subprocess.run(
        ["systemd-analyze", "verify", "tokenbox-extraction.service", "tokenbox-extraction.timer"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    complaints = [ln for ln in (done.stdout + done.stderr).splitlines() if "tokenbox-extraction" in ln]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr
