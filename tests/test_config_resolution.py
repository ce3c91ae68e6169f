"""One configuration resolution for every command (issue 10, item 2): `train`, `run` and each cell
of `compare` resolve the same training config from the same inputs, shown by their `--dry-run
--json` (and `train_config` in the `--json` summaries); one `--set` grammar (dotted everywhere, bare
for the stage a stage command runs); one rendering of a validation error; the commands' option
defaults are the config models'; and prefect.yaml's deployments resolve as the commands do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import flows.config as fc
import flows.machine as fm
from flows.config import REPO_ROOT, parse_overrides
from flows.resolve import build_config, resolve_config, resolve_evaluate_config
from storage.errors import SubsampleError


def quiet(_: str) -> None:
    pass


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A CPU machine (the machine's layer is fixed) with stores `demo` (2,000 images, the demo's
    count) and `cifar10` (1,100): `train` checks its batch size against the store."""
    from storage.store import write_store

    monkeypatch.setattr(fm, "cuda_available", lambda: False)
    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "cifar-src").mkdir()
    monkeypatch.setenv("SUBSAMPLE_CIFAR10_SOURCE", str(tmp_path / "cifar-src"))
    write_store("demo", np.zeros((2000, 4, 4, 3), np.uint8))
    write_store("cifar10", np.zeros((1100, 4, 4, 3), np.uint8))
    return tmp_path / "home"


def cli_json(args: list[str], capsys) -> dict:
    """``subsample ARGS`` in this process; its one JSON object."""
    from flows.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return json.loads(out.out)


def sets_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def bare(sets: list[str]) -> list[str]:
    """The same settings as `subsample train` also takes them: its own section's keys bare."""
    return [s.removeprefix("train.") for s in sets]


# (data set, preset or None, --set in the dotted form, what must come out in the training config)
CASES = [
    # the example: the data set's preset (demo), one training field
    ("demo", None, ["train.lr_d=1e-4"], {"lr_d": 1e-4, "preset": "demo", "ngf": 16}),
    # a preset given, fields of two sections, a value the preset also sets
    (
        "demo",
        "smoke",
        ["train.loss=hinge", "train.epochs=5", "batches.top_k=4", "tables.bins=[8,8]"],
        {"loss": "hinge", "epochs": 5, "ngf": 8, "preset": "smoke"},
    ),
    # no preset and a data set without one: the machine's (demo on a CPU) for `train` as for `run`
    ("cifar10", None, ["train.epochs=3"], {"preset": "demo", "epochs": 3, "ngf": 16}),
    # the preset's values for the data set's kind (paper-constructed-1024: 100 epochs on CIFAR-10) under --set
    (
        "cifar10",
        "paper-constructed-1024",
        ["train.lr_g=5e-4", "train.clip=null"],
        {"lr_g": 5e-4, "lr_d": 1e-3, "epochs": 100, "clip": None, "beta1": 0.5},
    ),
]


@pytest.mark.parametrize("dataset, preset, sets, expect", CASES)
def test_train_run_and_compare_resolve_the_same_training_config(home, capsys, dataset, preset, sets, expect):
    given = ["--preset", preset] if preset else []
    train = cli_json(["train", dataset, *given, *sets_args(bare(sets)), "--dry-run", "--json"], capsys)
    train_dotted = cli_json(["train", dataset, *given, *sets_args(sets), "--dry-run", "--json"], capsys)
    run = cli_json(["run", "--dataset", dataset, *given, *sets_args(sets), "--dry-run", "--json"], capsys)
    assert train["train_config"] == train_dotted["train_config"] == run["train_config"]
    assert {k: run["train_config"][k] for k in expect} == expect  # the layers landed, not just agreed
    for section in ("batches", "tables", "features"):
        assert train["config"][section] == run["config"][section], section

    # compare: a cell adds its scale's training values over the preset (under --set), its strategy,
    # B and seed, and tracking; `run` given those same values resolves the cell's config
    from pipeline.experiments.compare import SCALES

    p = preset or run["config"]["preset"]
    strategy, b = run["config"]["batches"]["strategy"], run["config"]["batches"]["batch_size"]
    compare = cli_json(
        [
            "compare",
            "--dataset",
            dataset,
            "--presets",
            p,
            "--strategies",
            strategy,
            "--batch-sizes",
            str(b),
            "--scale",
            "smoke",
            *sets_args(sets),
            "--dry-run",
            "--json",
        ],
        capsys,
    )
    cell = next(c for c in compare["cells"] if c["cell"].endswith("seed=0"))
    scale = [f"train.{k}={json.dumps(v)}" for k, v in SCALES["smoke"].train.items()]
    as_cell = cli_json(
        [
            "run",
            "--dataset",
            dataset,
            "--preset",
            p,
            *sets_args(scale + sets),
            "--set",
            "train.track=true",
            "--dry-run",
            "--json",
        ],
        capsys,
    )
    assert cell["train_config"] == as_cell["train_config"]
    assert {k: cell["train_config"][k] for k in expect if k not in SCALES["smoke"].train} == {
        k: v for k, v in expect.items() if k not in SCALES["smoke"].train
    }
    epochs = run["config"]["batches"]["epochs"]
    assert cell["batches_config"] == {**as_cell["config"]["batches"], "epochs": cell["batches_config"]["epochs"]}
    assert cell["batches_config"]["top_k"] == run["config"]["batches"]["top_k"] and epochs >= 1


# (stage command, its arguments, the dotted --set given to it and to `run`, the sections it hands its stage)
STAGE_CASES = [
    ("ingest", ["SRC", "--name", "{dataset}"], ["ingest.files_per_task=64"], ("ingest",)),
    ("features", ["{dataset}"], ["features.workers=1"], ("features",)),
    ("tables", ["{dataset}"], ["tables.bins=[8,8]"], ("tables", "features")),
    ("batches", ["{dataset}"], ["batches.top_k=4", "tables.bins=[8,8]"], ("batches", "tables", "features")),
    ("evaluate", ["0123456789abcdef"], ["evaluate.seed=3"], ("evaluate",)),
]


@pytest.mark.parametrize("dataset", ["demo", "cifar10", "celeba"])
@pytest.mark.parametrize("stage, args, sets, sections", STAGE_CASES, ids=[c[0] for c in STAGE_CASES])
def test_each_stage_command_hands_its_stage_what_run_resolves(
    home, capsys, monkeypatch, dataset, stage, args, sets, sections
):
    """A stage command run alone resolves its sections as `subsample run` does for the same data
    set and settings (data set defaults, the machine's preset, --set): `subsample batches demo`
    builds the demo run's batches, `subsample ingest SRC --name celeba` its size and crop."""
    import importlib
    from types import SimpleNamespace

    import pipeline.stages.generators as generators

    if dataset == "celeba":  # a store of its own (batches checks B against it); ingest resolves 64 px, crop 178
        from storage.store import write_store

        write_store("celeba", np.zeros((300, 4, 4, 3), np.uint8))
    got = {}

    def capture(*a, **k):
        got["args"] = a
        return {"stage": stage}

    module = importlib.import_module(f"pipeline.stages.{stage}")
    monkeypatch.setattr(module, f"run_{stage}", capture)
    monkeypatch.setattr(
        generators, "find_train_artifact", lambda run, stage="train": SimpleNamespace(summary={"dataset": dataset})
    )
    src = home.parent / "cifar-src"
    argv = [a.replace("{dataset}", dataset).replace("SRC", str(src)) for a in args]
    for form in (sets, [s.split(".", 1)[1] if s.startswith(stage + ".") else s for s in sets]):  # dotted, then bare
        got.clear()
        cli_json([stage, *argv, *sets_args(form), "--json"], capsys)
        run = cli_json(
            ["run", "--dataset", dataset, "--source", str(src), *sets_args(sets), "--dry-run", "--json"], capsys
        )
        configs = [a for a in got["args"] if hasattr(a, "model_dump")]
        handed = {type(c).__name__: c.model_dump(mode="json") for c in configs}
        for section in sections:
            want = run["config"][section]
            if section == "ingest":  # the stage's IngestConfig adds the source and the name to the run's options
                assert {k: handed["IngestConfig"][k] for k in want} == want and handed["IngestConfig"][
                    "name"
                ] == dataset
                if dataset == "celeba":
                    assert (want["size"], want["crop"]) == (64, 178)
            else:
                name = {
                    "features": "FeaturesConfig",
                    "tables": "TablesConfig",
                    "batches": "BatchesConfig",
                    "evaluate": "EvaluateConfig",
                }[section]
                assert handed[name] == want, (stage, section)


def test_run_and_train_json_summaries_carry_the_resolved_training_config(home, capsys, monkeypatch):
    """The `--json` of a real run has `train_config` (the flow and the server are stubbed here: what
    is checked is what the command adds to the flow's report)."""
    import flows.local_server
    import flows.train_subsample

    monkeypatch.setattr(flows.local_server, "start_temporary_server", lambda: None)
    monkeypatch.setattr(
        flows.train_subsample, "run", lambda cfg: {"flow_run": "x", "dataset": cfg.dataset, "stages": []}
    )
    report = cli_json(["run", "--dataset", "demo", "--set", "train.lr_d=1e-4", "--json"], capsys)
    dry = cli_json(["train", "demo", "--set", "lr_d=1e-4", "--dry-run", "--json"], capsys)
    assert report["train_config"] == dry["train_config"] and report["train_config"]["lr_d"] == 1e-4
    only = cli_json(["run", "--dataset", "demo", "--only", "tables", "--json"], capsys)
    assert "train_config" not in only  # a run that does not train says nothing about training


# --- one --set grammar ---------------------------------------------------------------------------


def test_set_grammar_dotted_everywhere_bare_for_the_commands_own_stage():
    # run, compare, deployments: section.field=value or a run-level field
    assert parse_overrides(["train.lr_d=1e-4", "only=tables", "tables.bins=[8,8]"]) == {
        "train": {"lr_d": 1e-4},
        "only": "tables",
        "tables": {"bins": [8, 8]},
    }
    # a stage command: bare keys are its stage's, a run-level key stays one, dotted keys of the
    # sections it reads apply to them
    assert parse_overrides(
        ["lr_d=1e-4", "train.lr_g=2e-4", "preset=smoke", "batches.batch_size=32", "tables.bins=[8,8]"], "train", "train"
    ) == {
        "train": {"lr_d": 1e-4, "lr_g": 2e-4},
        "preset": "smoke",
        "batches": {"batch_size": 32},
        "tables": {"bins": [8, 8]},
    }
    assert parse_overrides(["bins=[8,8]"], "tables", "tables") == {"tables": {"bins": [8, 8]}}
    # a section the command does not read: one line saying which command does
    with pytest.raises(SubsampleError) as e:
        parse_overrides(["evaluate.samples=10"], "train", "train")
    assert str(e.value) == (
        "train: --set 'evaluate.samples=10': `subsample train` does not use the evaluate settings "
        "(it reads features, tables, batches, train); `subsample run --set evaluate.samples=10` does"
    )
    with pytest.raises(SubsampleError, match=r"^train: --set 'lr_d': expected section.field=value, e.g. lr_d=1e-4"):
        parse_overrides(["lr_d"], "train", "train")
    # on `run` a stage's field needs its section, and is told which
    with pytest.raises(
        SubsampleError, match=r"^run: unknown setting 'lr_d': a train setting is given as train.lr_d=VALUE"
    ):
        resolve_config("run", {"dataset": "demo"}, ["lr_d=1e-4"], checks=False, note=quiet)
    # an unknown bare key is named as the stage's, with the nearest valid one
    with pytest.raises(SubsampleError, match=r"unknown setting 'train.lr_dd' \(did you mean 'train.lr_d'\?\)"):
        resolve_config("train", {"dataset": "demo", "only": "train"}, ["lr_dd=1"], checks=False, note=quiet)


# --- one rendering of a validation error ----------------------------------------------------------


def test_every_layer_renders_a_validation_error_the_same_way(home, capsys):
    from pydantic import ValidationError

    from flows.cli import main
    from flows.compare import build_compare_config
    from pipeline.config import BatchesConfig, IngestConfig, validation_message
    from pipeline.presets import resolve_batches_config, resolve_train_config

    with pytest.raises(ValidationError) as e:
        fc.RunConfig.model_validate({"train": {"lr_dd": 1, "epochs": 0}, "tables": {"bins": "x"}})
    msg = validation_message(e.value, fc.RunConfig)
    assert msg.startswith("unknown setting 'train.lr_dd' (did you mean 'train.lr_d'?); valid train settings: preset, ")
    assert "; train.epochs: Input should be greater than or equal to 1" in msg and "tables.bins: " in msg
    assert "\n" not in msg
    with pytest.raises(ValidationError) as e:
        IngestConfig(source="s", name="n", max_pixels=0)
    assert (
        validation_message(e.value, IngestConfig, flags=True)
        == "--max-pixels: Input should be greater than or equal to 1"
    )

    bad_train = r"unknown setting 'lr_dd' \(did you mean 'lr_d'\?\); valid settings: preset, arch"
    with pytest.raises(SubsampleError, match=r"^train: invalid training setting: " + bad_train):
        resolve_train_config("smoke", {"lr_dd": 1})
    # a batches key is checked against the batches settings (it used to be told the training ones)
    with pytest.raises(
        SubsampleError,
        match=r"unknown setting 'topk' \(did you mean 'top_k'\?\); valid settings: "
        + ", ".join(BatchesConfig.model_fields),
    ):
        resolve_batches_config("smoke", {"topk": 4})
    with pytest.raises(SubsampleError, match=r"^run: unknown setting 'train.lr_dd' \(did you mean 'train.lr_d'\?\)"):
        build_config({}, ["train.lr_dd=1"])
    with pytest.raises(SubsampleError, match=r"^compare: invalid comparison: seeds: Input should be greater"):
        build_compare_config({"seeds": 2})
    with pytest.raises(
        SubsampleError, match=r"^compare: unknown setting 'batches.topk' \(did you mean 'batches.top_k'\?\)"
    ):
        build_compare_config({}, ["batches.topk=4"])
    with pytest.raises(SubsampleError, match=r"^evaluate: --batch-size: Input should be greater than or equal to 1"):
        resolve_evaluate_config({"batch_size": 0, "device": "cpu"}, "mydata", note=quiet)
    # the commands print it as one line and exit 2
    for args, line in (
        (
            ["ingest", str(fc.DEMO_SOURCE), "--name", "x", "--max-pixels", "0"],
            "ingest: --max-pixels: Input should be greater than or equal to 1",
        ),
        (
            ["tables", "demo", "--bins", "0", "4"],
            "tables: --bins: Value error, bins must be positive integers, one per feature",
        ),
        # the same value by --set: named as the setting, not as a flag
        (
            ["tables", "demo", "--set", "bins=[0,4]"],
            "tables: tables.bins: Value error, bins must be positive integers, one per feature",
        ),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2 and capsys.readouterr().err == line + "\n"


# --- the commands' defaults are the models' ------------------------------------------------------


def test_cli_option_defaults_are_the_config_models_defaults():
    """Every option of a command named like a field of the config it builds defaults to that field's
    default, or to None (= the model's default, or the machine's / the data set's)."""
    import typer.main

    from flows.cli import app
    from flows.compare import CompareConfig
    from pipeline.config import BatchesConfig, EvaluateConfig, FeaturesConfig, IngestConfig

    models = {
        "ingest": IngestConfig,
        "features": FeaturesConfig,
        "batches": BatchesConfig,
        "evaluate": EvaluateConfig,
        "run": fc.RunConfig,
        "compare": CompareConfig,
    }
    commands = typer.main.get_command(app).commands
    checked = resolved = 0
    for name, model in models.items():
        for param in commands[name].params:
            field = model.model_fields.get(param.name)
            if field is None or param.default == []:
                continue
            if param.default is None:  # left to the one resolution (defaults < machine < data set < preset < --set)
                resolved += 1
                continue
            default = param.default.value if hasattr(param.default, "value") else param.default
            assert default == field.default, (name, param.name, default, field.default)
            checked += 1
    assert checked + resolved >= 25 and resolved >= 20  # the stage commands' options all go through the resolution


# --- deployments -----------------------------------------------------------------------------------


def _deployments() -> list[dict]:
    return yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]


def test_deployments_resolve_as_the_commands_do(home):
    """A deployment's parameters give the flow run that `subsample run` (or `demo`, `compare`) gives
    for the same values: its sections as `--set`, the rest as options."""
    from flows.compare import build_compare_config

    train_runs = [d for d in _deployments() if d["entrypoint"].endswith("train_subsample.py:train_subsample")]
    assert {"demo", "celeba", "cifar10"} <= {d["name"] for d in train_runs}
    for d in train_runs:
        params = d["parameters"]
        fields = {k: v for k, v in params.items() if not isinstance(v, dict) and k != "preset"}
        sets = [f"{k}.{f}={json.dumps(x)}" for k, v in params.items() if isinstance(v, dict) for f, x in v.items()]
        command = resolve_config(
            "run", fields, sets, {"preset": params.get("preset")}, checks=False, devices=False, note=quiet
        )  # devices=False: celeba-8gpu asks for CUDA, which this machine may lack
        assert build_config(params) == command, d["name"]
    by_name = {d["name"]: build_config(d["parameters"]) for d in train_runs}
    # the demo deployment is `subsample demo`, whose settings are the demo data set's
    assert by_name["demo"] == resolve_config("demo", fc.demo_fields(), note=quiet)
    assert (by_name["demo"].preset, by_name["demo"].tables.bins, by_name["demo"].evaluate.samples) == (
        "demo",
        (16, 16),
        2000,
    )
    # the data sets' conventions come from DATASETS and the presets, not restated in prefect.yaml
    assert (by_name["celeba"].ingest.size, by_name["celeba"].ingest.crop) == (64, 178)
    assert (by_name["cifar10"].ingest.size, by_name["cifar10"].batches.batch_size) == (32, 2048)
    assert by_name["celeba-8gpu"].train.nproc_per_node == 8
    compare_demo = next(d for d in _deployments() if d["name"] == "compare-demo")["parameters"]
    assert build_compare_config(compare_demo) == build_compare_config({})  # = `subsample compare` with no options
