"""bench/gpu_check.py runs on a CPU (``--device cpu --tiny``) on a Python where prefect, mlflow,
zarr and dask cannot be imported, and prints one JSON summary whose parts all pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKER = '''
import sys
class _Blocked:
    """Makes these packages unimportable, as on a GPU machine that has only torch and friends."""
    NAMES = ("prefect", "mlflow", "zarr", "dask", "distributed")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.NAMES:
            raise ImportError(f"{name} is not installed here (blocked by the test)")
        return None
sys.meta_path.insert(0, _Blocked())
'''


@pytest.mark.slow
def test_gpu_check_tiny_on_cpu_without_prefect_mlflow_zarr_dask(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    probe = subprocess.run(
        [sys.executable, "-c", "import zarr"],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr  # the blocker works
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "SUBSAMPLE_HOME": str(tmp_path / "home")}
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object on stdout
    s = json.loads(lines[0])
    assert s["device"] == "cpu" and s["tiny"] and s["ok"]
    a = s["train_throughput"]
    assert len(a["configs"]) == 4 and all(
        c["ours_images_per_second"] > 0 and c["baseline_images_per_second"] > 0 for c in a["configs"]
    )
    assert {(c["bf16"], c["channels_last"]) for c in a["configs"]} == {
        (False, False),
        (False, True),
        (True, False),
        (True, True),
    }
    b = s["inception"]
    assert b["weights"].startswith(("random init", "pretrained")) and b["forward_images_per_second"] > 0
    assert "fid2_train" in b["metrics"]
    c = s["paper_constructed"]
    assert c["losses_finite"] and c["checkpoint_restored_exactly"] and c["resume_bitwise_equal"]  # exact on a CPU
    assert c["preset"] == "paper-constructed" and c["strategy"] == "constructed" and c["epochs"] == 2
    assert not (tmp_path / "home").exists()  # nothing written: no store, no MLflow
