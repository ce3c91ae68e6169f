"""How a user meets the project from a shell: ``./activate``, the Prefect server a command reports
to, ``make deploy`` with no server, the checks before any work (devices, names), telemetry, what
the commands print, and the MLflow links and views."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from flows.config import REPO_ROOT
from storage.errors import SubsampleError

VENV_BIN = REPO_ROOT / ".venv" / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """A new shell's environment: none of the project's variables, no .venv on PATH."""
    path = ":".join(p for p in os.environ.get("PATH", "/usr/bin:/bin").split(":") if ".venv" not in p)
    return {"HOME": os.environ.get("HOME", "/tmp"), "PATH": path, **extra}


def in_activated_shell(script: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", f"source ./activate && {script}"],
        cwd=REPO_ROOT,
        env=clean_env(**extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not (VENV_BIN / "subsample").exists(), reason="no .venv/bin/subsample (make setup)")
def test_activate_puts_the_venv_first_and_sets_what_make_sets():
    r = in_activated_shell(
        "command -v subsample prefect mlflow; echo $SUBSAMPLE_HOME; echo $PREFECT_HOME; echo $PREFECT_API_URL; "
        "echo $PREFECT_SERVER_ANALYTICS_ENABLED $MLFLOW_DISABLE_TELEMETRY; echo ${SUBSAMPLE_LOCAL_PREFECT_API:-unset}"
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == [str(VENV_BIN / n) for n in ("subsample", "prefect", "mlflow")]
    assert lines[3:6] == [str(REPO_ROOT / "artifacts"), str(REPO_ROOT / ".prefect"), "http://127.0.0.1:4200/api"]
    assert lines[6] == "false true" and lines[7] == "http://127.0.0.1:4200/api"
    # what is already set is kept; a URL the user set is not marked as activate's
    r = in_activated_shell(
        "echo $SUBSAMPLE_HOME $PREFECT_API_URL ${SUBSAMPLE_LOCAL_PREFECT_API:-unset}",
        SUBSAMPLE_HOME="/tmp/mine",
        PREFECT_API_URL="http://prefect.example:4200/api",
    )
    assert r.stdout.split() == ["/tmp/mine", "http://prefect.example:4200/api", "unset"]
    r = in_activated_shell("echo $PREFECT_API_URL", PREFECT_PORT="4255")
    assert r.stdout.strip() == "http://127.0.0.1:4255/api"


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


@pytest.fixture
def answering_api():
    server = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api"
    server.shutdown()


def free_api() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/api"


def test_the_server_a_command_reports_to(monkeypatch, answering_api):
    from flows.local_server import LOCAL_API_MARK, choose_server

    notes: list[str] = []
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert choose_server("run", notes.append) is None and notes == []  # no URL: a temporary server
    monkeypatch.setenv("PREFECT_API_URL", answering_api)
    assert choose_server("run", notes.append) == answering_api  # a server answers: that one
    # activate's URL with nothing there: the temporary server, said in one line
    gone = free_api()
    monkeypatch.setenv("PREFECT_API_URL", gone)
    monkeypatch.setenv(LOCAL_API_MARK, gone)
    assert choose_server("run", notes.append) is None
    assert "PREFECT_API_URL" not in os.environ and len(notes) == 1 and gone in notes[0] and "make server" in notes[0]
    # a URL the user set that does not answer: one error line, before any work
    monkeypatch.setenv("PREFECT_API_URL", gone)
    monkeypatch.delenv(LOCAL_API_MARK)
    with pytest.raises(SubsampleError) as e:
        choose_server("run", notes.append)
    assert str(e.value).startswith("run: no Prefect server answers at PREFECT_API_URL=" + gone)
    assert "\n" not in str(e.value) and "make server" in str(e.value)


@pytest.mark.skipif(not (VENV_BIN / "python").exists(), reason="no .venv (make setup)")
@pytest.mark.parametrize("target", ["deploy", "worker"])
def test_make_deploy_and_worker_without_a_server_say_so_in_one_line(target):
    api = free_api()
    port = api.split(":")[2].split("/")[0]
    # as typed in a shell: not a sub-make of `make test` (whose MAKELEVEL adds "Entering directory" lines)
    drop = {"PREFECT_API_URL", "MAKELEVEL", "MAKEFLAGS", "MFLAGS"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    r = subprocess.run(
        ["make", "-o", "setup", target, f"PREFECT_PORT={port}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert f"make {target}: no Prefect server answers at {api}" in lines[0] and "`make server`" in lines[0]


def test_a_missing_cuda_device_is_refused_before_any_work(monkeypatch, tmp_path):
    import flows.machine as fm
    import flows.resolve as fr

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    monkeypatch.setattr(fm, "cuda_available", lambda: False)
    quiet = lambda _: None
    with pytest.raises(SubsampleError) as e:
        fr.resolve_config("run", {"dataset": "demo"}, ["train.device=cuda"], note=quiet)
    assert str(e.value).startswith("run: train.device=cuda asked for, but this machine has no CUDA device")
    with pytest.raises(SubsampleError) as e:  # evaluate's own option, its own name in the message
        fr.resolve_evaluate_config({"device": "cuda"}, None, quiet)
    assert str(e.value).startswith("evaluate: evaluate.device=cuda asked for")
    with pytest.raises(SubsampleError, match="ingest.decode_device=cuda"):
        fr.resolve_config("ingest", {"dataset": "x", "only": "ingest"}, ["ingest.decode_device=cuda"], note=quiet)
    # with a device there, or none asked for, nothing is refused; a deployment resolves on its worker
    assert fr.resolve_config("run", {"dataset": "demo"}, ["train.device=cpu"], note=quiet).train.device == "cpu"
    assert fr.build_config({"dataset": "celeba", "train": {"device": "cuda"}}).train.device == "cuda"
    monkeypatch.setattr(fm, "cuda_available", lambda: True)
    assert fr.resolve_config("run", {"dataset": "demo"}, ["train.device=cuda"], note=quiet).train.device == "cuda"


def test_a_known_data_set_without_a_source_is_not_answered_with_its_own_name(monkeypatch, tmp_path):
    from flows.checks import check_source

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    monkeypatch.delenv("SUBSAMPLE_CIFAR10_SOURCE", raising=False)
    with pytest.raises(SubsampleError) as e:
        check_source("cifar10", None, "run")
    assert "did you mean" not in str(e.value) and "SUBSAMPLE_CIFAR10_SOURCE" in str(e.value)
    with pytest.raises(SubsampleError, match="did you mean 'cifar10'"):
        check_source("cifar1", None, "run")


def test_evaluate_errors_name_evaluate(monkeypatch, tmp_path):
    from pipeline.stages.evaluate import run_evaluate

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    with pytest.raises(SubsampleError) as e:
        run_evaluate("0123456789abcdef", None)
    assert str(e.value).startswith("evaluate: no finished training run '0123456789abcdef'")


def test_telemetry_is_off_unless_the_user_turned_it_on():
    keys = ("PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY")
    code = f"import flows, os; print(*(os.environ[k] for k in {keys!r}))"
    env = {
        k: v for k, v in os.environ.items() if k not in ("PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY")
    }
    run = lambda e: subprocess.run([sys.executable, "-c", code], env=e, cwd=REPO_ROOT, capture_output=True, text=True)
    assert run(env).stdout.split() == ["false", "true"]
    assert run({**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "true"}).stdout.split() == ["true", "true"]


def test_summaries_are_printed_in_full(capsys):
    from flows.commands.common import emit

    metrics = {f"metric_number_{i}_with_a_long_name": i / 7 for i in range(30)}
    emit({"stage": "evaluate", "metrics": metrics, "grids": ["a" * 150, "b" * 150]}, False)
    out = capsys.readouterr().out
    import re

    assert "..." not in out
    assert all(re.search(rf"^\s+metric_number_{i}_with_a_long_name\s+{i / 7}$", out, re.M) for i in range(30))
    assert "a" * 150 in out and "b" * 150 in out


def test_presets_print_as_a_table_with_every_word():
    from flows.terminal import COLUMNS, presets_lines
    from pipeline.presets import KIND_NAMES, preset_table

    rows = preset_table()
    lines = presets_lines(rows, KIND_NAMES, width=160)
    assert lines[0].split()[:3] == list(COLUMNS[:3])
    starts = [ln.split()[0] for ln in lines[1:] if not ln.startswith(" ")]
    assert starts == [r["name"] for r in rows]  # one row per preset, in order
    words = " ".join(lines).split()
    assert all(w in words for r in rows for w in r["description"].split())  # wrapped, nothing cut
    assert max(len(ln) for ln in lines) <= 160  # the description wraps at the width


# --- MLflow links and views ------------------------------------------------------------------------


def test_metric_columns_put_final_metrics_and_floors_before_the_curves():
    from storage.mlflow_views import metric_columns

    keys = {
        "loss_g",
        "loss_d",
        "feature_kl256",
        "feature_kl256_floor",
        "feature_kl256_floor_sd",
        "eval/feature_kl500_train",
        "eval/feature_kl500_train_floor",
        "eval/fid10k_train",
        "batches/kl_mean",
        "images_per_second",
    }
    assert metric_columns(keys) == [
        "eval/fid10k_train",
        "eval/feature_kl500_train",
        "eval/feature_kl500_train_floor",
        "feature_kl256",
        "feature_kl256_floor",
        "loss_d",
        "loss_g",
    ]


def test_a_comparison_link_opens_its_children_in_model_training_mode(monkeypatch, tmp_path):
    """The view stored for a comparison filters to its children and groups them by preset (so the
    UI lists them, not one folded parent row), with the columns its children's metrics name."""
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from pipeline.experiments.mlflow_record import NOTE_TAG, record_on_parent
    from storage import mlflow_views, tracking

    parent = tracking.start_run("shell", run_name="cmp", tags={"subsample.compare": "parent"}, params={})
    for seed in (0, 1):
        child = tracking.start_run(
            "shell",
            run_name=f"c{seed}",
            tags={},
            params={"batches": {"strategy": "random", "batch_size": 64, "seed": seed}, "train": {"preset": "demo"}},
            parent_run_id=parent,
        )
        tracking.log_metrics(child, {"eval/feature_kl500_train": 1.0 + seed, "eval/feature_kl500_train_floor": 0.5}, 0)
        tracking.log_metrics(child, {"loss_d": 0.7, "feature_kl256": 2.0}, 1)
    summary = {
        "dataset": "shell",
        "scale": "smoke",
        "runs": 2,
        "runs_ok": 2,
        "answer": "**Answer.** No verdict.",
        "answer_details": ["One. " * 3000],  # far more than a tag holds
        "configurations": [
            {
                "preset": "demo",
                "strategy": "random",
                "batch_size": 64,
                "metrics": {"feature_kl": {"mean": 1.5, "sd": 0.7}},
            }
        ],
    }
    link = record_on_parent(parent, summary, "http://127.0.0.1:5099")
    c = tracking.client()
    exp = c.get_run(parent).info.experiment_id
    assert (
        link
        == f"http://127.0.0.1:5099/#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey=compare-{parent}"
    )
    view = json.loads(c.get_experiment(exp).tags[f"mlflow.sharedViewState.compare-{parent}"])
    state = json.loads(view["state"])
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parent}'"
    assert state["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "train.preset"}]
    assert state["selectedColumns"] == [
        "params.`batches.strategy`",
        "params.`batches.batch_size`",
        "params.`batches.seed`",
        "params.`train.preset`",
        "metrics.`eval/feature_kl500_train`",
        "metrics.`eval/feature_kl500_train_floor`",
        "metrics.`feature_kl256`",
        "metrics.`loss_d`",
    ]
    run = c.get_run(parent)
    assert run.data.metrics["summary/feature_kl/demo random B64"] == 1.5
    note = run.data.tags[NOTE_TAG]
    assert note.startswith("**Comparison on shell (smoke)**") and link in note and len(note) <= 8000
    assert "(continued in report/report.md)" in note
    assert mlflow_views.run_url(exp, parent).endswith(f"/runs/{parent}?workflowType=machine_learning")
    lines = mlflow_views.comparison_lines(c, exp, "http://127.0.0.1:5099")
    assert len(lines) == 1 and "cmp" in lines[0] and "2 runs" in lines[0] and lines[0].endswith(link)
