"""End to end through Prefect's deployment machinery: a real local server and a process worker,
``prefect deploy --name demo`` from ``prefect.yaml``, ``prefect deployment run
train-subsample/demo`` with tiny overrides, then the flow run's state, its task runs, the Prefect
artifacts and the MLflow run it recorded. Server and worker are stopped in any case.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess

import pytest

from flows.config import DEMO_SOURCE, REPO_ROOT, STAGES
from flows.local_server import api_url, prefect_exe, start_server, start_worker, stop, wait_healthy

pytestmark = pytest.mark.slow

RECORD = 1 + 32 * 32 * 3
TINY = [
    "tables.bins=[8,8]",
    "train.ngf=8",
    "train.ndf=8",
    "train.epochs=1",
    "train.kl_samples=64",
    "train.sample_grid=16",
    "evaluate.samples=64",
    "evaluate.grid=16",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_deployment_runs_on_a_process_worker(tmp_path):
    source = tmp_path / "tiny-cifar"
    source.mkdir()
    (source / "data_batch_1.bin").write_bytes((DEMO_SOURCE / "cifar10-demo.bin").read_bytes()[: 192 * RECORD])
    home = tmp_path / "subsample-home"
    port = free_port()
    url = api_url("127.0.0.1", port)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SUBSAMPLE_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=url,
        SUBSAMPLE_HOME=str(home),
    )

    def prefect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [prefect_exe(), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )

    server = worker = None
    server_log = open(tmp_path / "server.log", "w")
    worker_log = open(tmp_path / "worker.log", "w")
    try:
        server = start_server(
            "127.0.0.1", port, env={k: v for k, v in env.items() if k != "PREFECT_API_URL"}, log=server_log
        )
        wait_healthy(url, timeout_s=120, proc=server)
        # the UI calls the API on this port, not Prefect's default 4200
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=10) as r:
            assert json.load(r)["api_url"] == url

        created = prefect("work-pool", "create", "subsample-process", "--type", "process")
        assert created.returncode == 0, created.stdout + created.stderr
        worker = start_worker(url, env=env, log=worker_log)

        deployed = prefect("--no-prompt", "deploy", "--name", "demo")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr

        ran = prefect(
            "deployment",
            "run",
            "train-subsample/demo",
            "--param",
            f"source={source}",
            "--param",
            f"overrides={json.dumps(TINY)}",
            "--watch",
            "--watch-timeout",
            "240",
            timeout=300,
        )
        logs = (tmp_path / "worker.log").read_text()
        assert ran.returncode == 0, ran.stdout + ran.stderr + logs[-5000:]
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", ran.stdout).group(1)

        # the run, its tasks and its Prefect artifacts, as the API has them
        import asyncio

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            FlowRunFilter,
            FlowRunFilterId,
        )
        from prefect.settings import PREFECT_API_URL, temporary_settings

        async def read():
            async with get_client() as client:
                run = await client.read_flow_run(flow_run_id)
                tasks = await client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
                )
                artifacts = await client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
                )
                return run, tasks, artifacts

        with temporary_settings(updates={PREFECT_API_URL: url}):
            run, tasks, artifacts = asyncio.run(read())
        assert run.state.is_completed()
        assert run.parameters["source"] == str(source)
        assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == sorted(STAGES)
        assert all(t.state.is_completed() for t in tasks)
        assert {"demo-ingest", "demo-train", "demo-evaluate", "demo-run"} <= {a.key for a in artifacts}

        # the worker ran the flow from this checkout, writing to SUBSAMPLE_HOME; MLflow has the run
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments)
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert (home / "datasets" / "demo.zarr").exists()

        # train on "another work pool": a child run of a deployment (here the same one and pool)
        ran = prefect(
            "deployment",
            "run",
            "train-subsample/demo",
            "--param",
            f"source={source}",
            "--param",
            f"overrides={json.dumps([*TINY, 'train.seed=1'])}",
            "--param",
            "train_deployment=train-subsample/demo",
            "--watch",
            "--watch-timeout",
            "240",
            timeout=300,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr + (tmp_path / "worker.log").read_text()[-5000:]
        parent_id = re.search(r"UUID: ([0-9a-f-]{36})", ran.stdout).group(1)

        async def children():
            async with get_client() as client:
                tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent_id])))
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(parent_task_run_id={"any_": [t.id for t in tasks]})
                )
                return tasks, runs

        with temporary_settings(updates={PREFECT_API_URL: url}):
            tasks, runs = asyncio.run(children())
        states = {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks if t.state}
        assert states["train"] == "Completed" and states["tables"] == "Cached"
        assert len(runs) == 1 and runs[0].parameters["only"] == "train" and runs[0].state.is_completed()
        assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 2
    finally:
        stop(worker)
        stop(server)
        server_log.close()
        worker_log.close()
