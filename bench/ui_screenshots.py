"""Screenshots of the MLflow UI in a real (headless) browser: what a user sees on opening it.

    python bench/ui_screenshots.py [--home $SUBSAMPLE_HOME] [--out bench/out/ui] [--dataset demo]

Starts ``mlflow ui`` on a free port against ``--home``'s tracking database (a home with at least one
training run, e.g. after ``make demo``), then takes two screenshots with headless Chromium and dumps
the rendered page text of each:

- ``experiment.png``: the experiment page as the UI opens it (``#/experiments/<id>``). A
  model-training experiment (tag ``mlflow.experimentKind`` = ``custom_model_development``, set by
  ``storage.tracking``) opens on its runs table; without the tag MLflow 3 may open it in its GenAI
  mode (Traces, latency, token usage).
- ``runs-table.png``: the link ``make mlflow-ui`` prints (``?viewStateShareKey=subsample-runs``),
  the runs table with the strategy, B, seed, preset and metric columns.

Prints one line per picture: its path and which expected texts the rendered page holds. Exit code
0 when both pages show what they should, 1 when not, 3 when no Chromium is installed (Debian:
``apt-get install chromium``). Nothing else depends on Chromium: the test that runs this script
is skipped without it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = "1600,1000"
# what each page must show once rendered (column headers, run names) and must not (GenAI mode)
EXPECT_EXPERIMENT = ("Runs",)
EXPECT_TABLE = ("batches.strategy", "batches.batch_size", "batches.seed", "feature_kl", "loss_d")
GENAI_SIGNS = ("Token usage", "Token Usage", "Evaluation runs")


def browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(exe: str, url: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """Headless Chromium, no network beyond localhost, a throw-away profile; the page's scripts get
    ``virtual-time-budget`` ms of (virtual) time to render the single-page app first."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW}",
                "--virtual-time-budget=25000",
                "--hide-scrollbars",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def page_text(dom: str) -> str:
    """The visible text of a dumped DOM (tags and scripts removed), for the checks."""
    import html
    import re

    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S | re.I)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home", default=os.environ.get("SUBSAMPLE_HOME", "artifacts"), help="SUBSAMPLE_HOME with runs"
    )
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "ui"), help="folder for the PNGs and page texts")
    parser.add_argument("--dataset", default=None, help="experiment subsample/<dataset> (default: the first one)")
    args = parser.parse_args(argv)

    exe = browser()
    if exe is None:
        print("ui_screenshots: no Chromium found (apt-get install chromium); nothing checked", file=sys.stderr)
        return 3
    home = Path(args.home).absolute()
    os.environ["SUBSAMPLE_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    from storage import tracking

    c = tracking.client()
    names = [e.name for e in c.search_experiments(filter_string="name LIKE 'subsample/%'")]
    if not names:
        print(
            f"ui_screenshots: no subsample/* experiment in {home / 'mlflow.db'}; run `make demo` first", file=sys.stderr
        )
        return 1
    dataset = args.dataset or names[0].split("/", 1)[1]
    exp_id = tracking.experiment_id(dataset, c)  # an experiment made before the tags existed gets them
    runs = c.search_runs([exp_id], max_results=5)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    port = free_port()
    ui = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).with_name("mlflow")
    log = open(out / "mlflow-ui.log", "w")
    server = subprocess.Popen(
        [
            str(mlflow if mlflow.exists() else "mlflow"),
            "ui",
            "--backend-store-uri",
            tracking.mlflow_tracking_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ok = True
    try:
        from flows.local_server import wait_answering

        wait_answering(f"{ui}/health", 120, server, what="mlflow ui")
        pages = [
            ("experiment", tracking.experiment_url(exp_id, ui), EXPECT_EXPERIMENT),
            (
                "runs-table",
                tracking.runs_table_url(exp_id, ui),
                EXPECT_TABLE + tuple(r.info.run_name for r in runs[:1]),
            ),
        ]
        for name, url, expect in pages:
            png = out / f"{name}.png"
            shot = chromium(exe, url, f"--screenshot={png}")
            dom = chromium(exe, url, "--dump-dom").stdout
            text = " ".join(page_text(dom).split())
            (out / f"{name}.txt").write_text(text)
            missing = [e for e in expect if e not in text]
            genai = [g for g in GENAI_SIGNS if g in text]
            good = png.exists() and not missing and not genai
            ok &= good
            print(
                f"{png}: {'ok' if good else 'NOT OK'} ({url}; shows {[e for e in expect if e in text]}"
                f"{'; missing ' + str(missing) if missing else ''}{'; GenAI mode: ' + str(genai) if genai else ''}"
                f"{'' if png.exists() else '; no screenshot: ' + shot.stderr.strip()[-300:]})"
            )
    finally:
        from flows.local_server import stop

        stop(server)  # SIGTERM to its process group, SIGKILL what is left after 15 s
        log.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
