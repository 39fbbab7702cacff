"""The ``slotpool`` command fails in one or two lines on stderr, exit 1, and never echoes a secret.

Every test runs the installed command in a real process.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

SLOTPOOL = str(Path(sys.executable).parent / "slotpool")
# base64 of 19 and of 32 bytes: neither is a development key, the first is the wrong length.
SHORT_PEPPER = base64.b64encode(b"secret-pepper-value").decode()
OWN_KEY = base64.b64encode(b"an-operator-key-of-32-bytes-0001").decode()
PASSWORD = "s3cret-Passw0rd"
ALLOW = {"SLOTPOOL_ALLOW_DEVELOPMENT_WITH_DEPLOYMENT_SETTINGS": "true"}


def run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLOTPOOL_") and k != "DATABASE_URL"}
    return subprocess.run(
        [SLOTPOOL, *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )


def failed_briefly(result: subprocess.CompletedProcess[str], *secrets: str) -> list[str]:
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stderr
    assert 1 <= len(lines) <= 2, result.stderr
    # "slotpool: …", or "slotpool <command>: …" where the command itself refuses.
    assert all(re.match(r"slotpool( [a-z-]+)?: ", line) for line in lines), result.stderr
    for secret in secrets:
        assert secret not in result.stderr + result.stdout
    return lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def with_user(url: str, user: str, password: str) -> str:
    return make_url(url).set(username=user, password=password).render_as_string(hide_password=False)


def test_a_key_of_the_wrong_length_is_named_not_echoed():
    result = run("migrate", SLOTPOOL_API_KEY_PEPPER=SHORT_PEPPER)
    [line] = failed_briefly(result, SHORT_PEPPER, SHORT_PEPPER[:8], "secret-pepper")
    assert "SLOTPOOL_API_KEY_PEPPER" in line and "32 bytes" in line
    assert "input_value" not in line


def test_production_with_a_malformed_key_and_a_bad_port_names_both():
    junk = "not*base64*but-a-secret"
    result = run(
        "serve",
        SLOTPOOL_ENV="production",
        SLOTPOOL_DATA_KEY=junk,
        SLOTPOOL_METRICS_PORT="http",
        DATABASE_URL=f"postgresql://slotpool:{PASSWORD}@db.invalid/slotpool",
    )
    [line] = failed_briefly(result, junk, PASSWORD)
    assert "SLOTPOOL_DATA_KEY" in line and "SLOTPOOL_METRICS_PORT" in line


def test_production_refuses_the_development_secrets_and_loopback_webhooks():
    result = run(
        "worker",
        SLOTPOOL_ENV="production",
        SLOTPOOL_DATA_KEY=OWN_KEY,
        SLOTPOOL_INDEX_KEY=OWN_KEY,
        SLOTPOOL_WEBHOOK_ALLOW_LOOPBACK="true",
        DATABASE_URL=f"postgresql://slotpool:{PASSWORD}@db.invalid/slotpool",
    )
    [line] = failed_briefly(result, OWN_KEY, PASSWORD)
    assert "SLOTPOOL_API_KEY_PEPPER" in line


@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_URL": f"postgresql://slotpool:{PASSWORD}@db.invalid/slotpool"},
        {"SLOTPOOL_DATA_KEY": OWN_KEY},
    ],
    ids=["database_url", "own_key"],
)
@pytest.mark.parametrize("command", ["serve", "worker", "migrate"])
def test_development_refuses_to_start_with_deployment_settings(command, env):
    result = run(command, **env)
    first, hint = failed_briefly(result, PASSWORD, OWN_KEY)
    assert "SLOTPOOL_ENV is development" in first and next(iter(env)) in first
    assert "SLOTPOOL_ALLOW_DEVELOPMENT_WITH_DEPLOYMENT_SETTINGS=true" in hint


def test_an_unreachable_database_is_two_lines_and_debug_shows_the_traceback():
    url = f"postgresql://slotpool:{PASSWORD}@127.0.0.1:{free_port()}/slotpool"
    result = run("migrate", DATABASE_URL=url, **ALLOW)
    first, hint = failed_briefly(result, PASSWORD)
    assert first.startswith("slotpool: cannot reach the database") and "DATABASE_URL" in hint
    debug = run("--debug", "migrate", DATABASE_URL=url, **ALLOW)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-2].startswith("slotpool: cannot reach the database")
    assert PASSWORD not in debug.stderr


def test_a_refused_login_is_two_lines_without_the_password(database_url):
    url = with_user(database_url, "slotpool_no_such_role", PASSWORD)
    result = run("migrate", DATABASE_URL=url, **ALLOW)
    first, hint = failed_briefly(result, PASSWORD)
    assert first.startswith("slotpool: the database refused the login"), first
    assert "user and password in DATABASE_URL" in hint


def test_create_client_for_an_unknown_organisation_is_one_line(clean_db):
    result = run("create-client", "--org-code", "NO-SUCH-ORG", "--role", "hospital", "--name", "x",
                 DATABASE_URL=clean_db, **ALLOW)  # fmt: skip
    assert failed_briefly(result) == [
        "slotpool create-client: no organisation with code NO-SUCH-ORG (codes are case-sensitive)"
    ]
    debug = run("--debug", "create-client", "--org-code", "NO-SUCH-ORG", "--role", "hospital", "--name", "x",
                DATABASE_URL=clean_db, **ALLOW)  # fmt: skip
    assert debug.returncode == 1 and "Traceback" in debug.stderr, debug.stderr
    assert debug.stderr.splitlines()[-1] == result.stderr.splitlines()[-1]
    assert result.stdout == ""


def test_serve_on_a_port_in_use_is_two_lines():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            "serve", "--port", str(port), "--no-loops", DATABASE_URL="postgresql://u@127.0.0.1:1/x", **ALLOW
        )
    first, _ = failed_briefly(result)
    assert f"127.0.0.1:{port} (--port)" in first and "in use" in first


def wait_for(process: subprocess.Popen[str], url: str) -> httpx.Response:
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered"
        time.sleep(0.2)


def start(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([SLOTPOOL, *args], env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=30)
    if process.stderr:
        process.stderr.close()


def test_serve_exposes_metrics_on_their_own_port_only(clean_db):
    api, metrics = free_port(), free_port()
    process = start("serve", "--port", str(api), "--no-loops",
                    DATABASE_URL=clean_db, SLOTPOOL_METRICS_PORT=str(metrics), **ALLOW)  # fmt: skip
    try:
        wait_for(process, f"http://127.0.0.1:{api}/healthz")
        scraped = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5)
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert "# TYPE slotpool_http_request_seconds histogram" in scraped.text
        assert 'route="/healthz"' in scraped.text  # the request above, counted by this process
        assert httpx.get(f"http://127.0.0.1:{api}/metrics", timeout=5).status_code == 404
    finally:
        stop(process)


def test_worker_exposes_metrics_when_the_port_is_set(clean_db):
    metrics = free_port()
    process = start("worker", DATABASE_URL=clean_db, SLOTPOOL_METRICS_PORT=str(metrics), **ALLOW)
    try:
        scraped = wait_for(process, f"http://127.0.0.1:{metrics}/metrics")
        assert "# TYPE slotpool_loop_errors_total counter" in scraped.text
    finally:
        stop(process)


def test_worker_stops_its_loops_cleanly_on_sigterm(clean_db):
    """Docker and systemd stop the worker with SIGTERM: its loops finish, nothing is left pending."""
    metrics = free_port()
    process = start("worker", DATABASE_URL=clean_db, SLOTPOOL_METRICS_PORT=str(metrics), **ALLOW)
    wait_for(process, f"http://127.0.0.1:{metrics}/metrics")
    process.terminate()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and "destroyed but it is pending" not in stderr, stderr


def test_version_is_printed():
    result = run("--version")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"slotpool \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


def test_a_taken_port_fails_before_the_demo_seeds_or_prints_a_key():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            "serve", "--demo", "--port", str(port), DATABASE_URL="postgresql://u@127.0.0.1:1/x", **ALLOW
        )
    first, _ = failed_briefly(result)
    assert f"127.0.0.1:{port} (--port)" in first
    assert result.stdout == ""  # no keys for a server that never starts
    assert "seeding" not in result.stderr


def test_production_refuses_serve_sandbox_outright():
    result = run(
        "serve",
        "--sandbox",
        SLOTPOOL_ENV="production",
        SLOTPOOL_DATA_KEY=OWN_KEY,
        SLOTPOOL_INDEX_KEY=OWN_KEY,
        SLOTPOOL_API_KEY_PEPPER=OWN_KEY,
        DATABASE_URL=f"postgresql://slotpool:{PASSWORD}@db.invalid/slotpool",
    )
    first, _ = failed_briefly(result, OWN_KEY, PASSWORD)
    assert "production refuses --sandbox" in first
    setting = run(
        "worker",
        SLOTPOOL_ENV="production",
        SLOTPOOL_SANDBOX="true",
        SLOTPOOL_DATA_KEY=OWN_KEY,
        SLOTPOOL_INDEX_KEY=OWN_KEY,
        SLOTPOOL_API_KEY_PEPPER=OWN_KEY,
        DATABASE_URL=f"postgresql://slotpool:{PASSWORD}@db.invalid/slotpool",
    )
    [line] = failed_briefly(setting, OWN_KEY, PASSWORD)
    assert "SLOTPOOL_SANDBOX" in line


def test_serve_sandbox_refuses_a_database_that_served_on_the_wall_clock(world, clean_db):
    result = run("serve", "--sandbox", "--port", str(free_port()), DATABASE_URL=clean_db, **ALLOW)
    [line] = failed_briefly(result)
    assert line.startswith("slotpool serve: this database already holds organisations"), line
