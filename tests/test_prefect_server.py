"""Prefect's servers as a user meets them: the CLI's temporary server (a longer start-up timeout
unless the user set one, one start at a time per PREFECT_HOME, so two commands on a fresh home do
not both migrate its database), a local server whose UI calls the API on the chosen port, and
`make deploy` talking to PREFECT_API_URL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from flows.config import DEMO_SOURCE, REPO_ROOT
from flows.local_server import TEMPORARY_SERVER_TIMEOUT_S, api_url, server_env


def clean_env(tmp_path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SUBSAMPLE_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH=str(REPO_ROOT),
        **extra,
    )
    return env


def test_start_up_timeout_is_the_users_when_set_else_longer_than_prefects(tmp_path):
    code = "from flows.local_server import temporary_server_timeout as t; print(*t())"
    run = lambda env: subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,  # noqa: E731
        timeout=120,
        check=True,
    ).stdout.split()
    assert run(clean_env(tmp_path)) == [str(TEMPORARY_SERVER_TIMEOUT_S), "False"]
    assert TEMPORARY_SERVER_TIMEOUT_S > 20  # Prefect's own 20 s failed the first `make demo`
    assert run(clean_env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="77")) == ["77", "True"]


def test_local_server_ui_calls_the_api_on_its_own_port():
    env = server_env("127.0.0.1", 4255, {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "HOME": "/root"})
    assert env["PREFECT_UI_API_URL"] == api_url("127.0.0.1", 4255) == "http://127.0.0.1:4255/api"
    assert (env["PREFECT_SERVER_API_PORT"], env["PREFECT_SERVER_API_HOST"]) == ("4255", "127.0.0.1")
    assert "PREFECT_API_URL" not in env and env["HOME"] == "/root"


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_deploy_talks_to_prefect_api_url_else_to_the_port():
    def deploy_lines(**env: str) -> list[str]:
        e = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        e.update(env)
        out = subprocess.run(
            # CHECK_SERVER= : no server answers here, and make -n expands the check that would stop at it
            [
                "make",
                "-n",
                "deploy",
                "BIN=.venv/bin",
                "CHECK_SERVER=",
                *[f"{k}={v}" for k, v in env.items() if k == "PREFECT_PORT"],
            ],
            cwd=REPO_ROOT,
            env=e,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [ln for ln in out.splitlines() if "prefect" in ln and "deploy --all" in ln]

    assert deploy_lines(PREFECT_API_URL="http://10.1.2.3:9999/api") == [
        "PREFECT_API_URL=http://10.1.2.3:9999/api .venv/bin/prefect --no-prompt deploy --all"
    ]
    assert deploy_lines(PREFECT_PORT="4255") == [
        "PREFECT_API_URL=http://127.0.0.1:4255/api .venv/bin/prefect --no-prompt deploy --all"
    ]


@pytest.mark.slow
def test_two_runs_at_once_on_a_fresh_prefect_home_both_start_their_server(tmp_path):
    """Two `subsample run --dataset demo --only ingest` started together on one fresh PREFECT_HOME
    (separate SUBSAMPLE_HOMEs: only Prefect is shared). Without the lock both servers migrated the
    new database at once, and one failed ("Online migration expected to match one row")."""
    procs = []
    for i in (1, 2):
        env = clean_env(tmp_path, SUBSAMPLE_HOME=str(tmp_path / f"home{i}"))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flows.cli",
                    "run",
                    "--dataset",
                    "demo",
                    "--source",
                    str(DEMO_SOURCE),
                    "--only",
                    "ingest",
                    "--json",
                ],
                env=env,
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
        assert '"stage": "ingest"' in out
        assert "CommandError" not in err and "Application startup failed" not in err
        assert "prefect: starting Prefect's temporary server" in err
    said = "".join(err for _, err in results)
    assert said.count("first start in this PREFECT_HOME") >= 1
    server_log = (tmp_path / "prefect" / "temporary-server.log").read_text()  # the servers' own output
    assert server_log.count("temporary server of process") == 2
    assert "CommandError" not in server_log and "Application startup failed" not in server_log
