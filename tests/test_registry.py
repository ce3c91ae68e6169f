"""The registries: one error for an unknown name, whichever registry and whichever way it is
reached (a lookup, a config, the CLI); the configs' Literals made of the registries' names; metrics
selected one by one compute only what they need."""

from __future__ import annotations

import re
from typing import get_args

import numpy as np
import pytest
from pydantic import ValidationError

import pipeline.gan  # noqa: F401  (registers every architecture)
from kernels.features import FEATURES, compute_features
from pipeline import fidelity
from pipeline.config import (
    FILL_MODES,
    STRATEGY_NAMES,
    TOPUP_MODES,
    BatchesConfig,
    EvaluateConfig,
    FeaturesConfig,
    FillMode,
    Strategy,
    TopupMode,
    TrainConfig,
)
from pipeline.data.strategies import STRATEGIES, construct_epoch
from pipeline.fidelity import METRIC_FAMILIES
from pipeline.gan.losses import LOGISTIC_LOSSES, LOSSES, OPTIMIZERS, make_optimizer
from pipeline.gan.methods import METHODS
from pipeline.gan.models import ARCHITECTURES, ModelSpec, build_generator
from pipeline.metrics import METRICS, metrics_for, parse_metric_name
from pipeline.presets import PRESETS, get_preset
from pipeline.registry import Registry, UnknownName, unknown_message
from pipeline.stages.tables import build_table

# <stage>: unknown <kind> '<name>'[ (did you mean '<near>'?)]; registered: <a>, <b>, ...
SHAPE = re.compile(
    r"^(?P<stage>[a-z]+): unknown (?P<kind>[a-z -]+) '(?P<name>[^']*)'"
    r"(?: \(did you mean '(?P<near>[^']+)'\?\))?; registered: (?P<names>[^;\n]+)$"
)

REGISTRIES = {
    "architectures": ARCHITECTURES,
    "losses": LOSSES,
    "optimizers": OPTIMIZERS,
    "methods": METHODS,
    "strategies": STRATEGIES,
    "presets": PRESETS,
    "metrics": METRICS,
    "metric families": METRIC_FAMILIES,
    "metrics at N=2000": metrics_for(2000),
}


def _parts(message: str) -> dict:
    m = SHAPE.match(message)
    assert m, message
    return m.groupdict()


@pytest.mark.parametrize("which", list(REGISTRIES))
def test_an_unknown_name_gives_the_same_one_line_error_in_every_registry(which):
    reg = REGISTRIES[which]
    assert len(reg) >= 2
    for lookup in (lambda n: reg[n], lambda n: reg.get(n), lambda n: reg.check(n)):
        with pytest.raises(UnknownName) as e:
            lookup("nosuch")
        p = _parts(str(e.value))
        assert (p["stage"], p["kind"], p["name"], p["near"]) == (reg.stage, reg.kind, "nosuch", None)
        assert p["names"].split(", ") == list(reg.names()) and "\n" not in str(e.value)
        assert isinstance(e.value, UnknownName) and e.value.message == reg.message("nosuch")
    # a near miss names the nearest; another stage can be named at the lookup
    first = reg.names()[0]
    with pytest.raises(UnknownName) as e:
        reg.get(first + "x", stage="run")
    p = _parts(str(e.value))
    assert (p["stage"], p["near"]) == ("run", first)
    # pydantic validators get the same text as a ValueError
    with pytest.raises(ValueError, match=re.escape(reg.message("nosuch"))):
        reg.validate("nosuch")
    assert reg.validate(first) == first and first in reg and "nosuch" not in reg and [] not in reg


# every way a user reaches a registry: the entry points and configs, each with the same message
ENTRY_POINTS = {
    "architecture": (lambda: build_generator(ModelSpec(arch="nosuch")), ARCHITECTURES),
    "optimizer": (lambda: make_optimizer("nosuch", [], 1e-3, TrainConfig()), OPTIMIZERS),
    "strategy": (
        lambda: construct_epoch(
            build_table(np.ones((8, 1)), ("f",), (2,)), batch_size=2, strategy="nosuch", seed=0, epoch=0
        ),
        STRATEGIES,
    ),
    "preset": (lambda: get_preset("nosuch"), PRESETS),
    "metric": (
        lambda: fidelity.needs_fidelity(
            EvaluateConfig.model_construct(samples=2000, metrics=("nosuch",), fidelity=True)
        ),
        metrics_for(2000),
    ),
}
CONFIG_FIELDS = {
    "arch": (lambda: TrainConfig(arch="nosuch"), ARCHITECTURES.message("nosuch")),
    "loss": (lambda: TrainConfig(loss="nosuch"), LOSSES.message("nosuch")),
    "method": (lambda: TrainConfig(method="nosuch"), METHODS.message("nosuch")),
    "optimizer": (lambda: TrainConfig(optimizer="nosuch"), OPTIMIZERS.message("nosuch")),
    "g_loss": (lambda: TrainConfig(g_loss="nosuch"), unknown_message("logistic loss", "nosuch", LOGISTIC_LOSSES)),
    "features": (lambda: FeaturesConfig(features=("nosuch",)), unknown_message("feature", "nosuch", FEATURES)),
    "metrics": (lambda: EvaluateConfig(samples=2000, metrics="nosuch"), metrics_for(2000).message("nosuch")),
    "strategy": (lambda: BatchesConfig(strategy="nosuch"), None),  # a Literal: pydantic's own message
}


@pytest.mark.parametrize("which", list(ENTRY_POINTS))
def test_entry_points_raise_the_registrys_error(which):
    call, reg = ENTRY_POINTS[which]
    with pytest.raises(UnknownName) as e:
        call()
    assert str(e.value) == f"{reg.stage}: {reg.message('nosuch')}"


@pytest.mark.parametrize("field", list(CONFIG_FIELDS))
def test_configs_carry_the_registrys_message(field):
    make, message = CONFIG_FIELDS[field]
    with pytest.raises(ValidationError) as e:
        make()
    (err,) = e.value.errors()
    assert err["loc"] == (field,)
    if message is not None:
        assert err["msg"] == f"Value error, {message}"
        _parts(f"x: {message}")


def test_the_cli_prints_the_unknown_metric_in_one_line_and_exits_2(capsys, tmp_path, monkeypatch):
    from flows.cli import main

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        main(
            [
                "evaluate",
                "0123456789abcdef",
                "--samples",
                "2000",
                "--metrics",
                "feature_kl2k_train,fid2k_trian",
                "--json",
            ]
        )
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate: ")
    assert metrics_for(2000).message("fid2k_trian") in lines[0]
    assert "(did you mean 'fid2k_train'?)" in lines[0]


# --- the configs' Literals are the registries' names ---------------------------------------------


def test_literals_accept_exactly_the_registered_names():
    assert get_args(Strategy) == STRATEGY_NAMES == STRATEGIES.names()
    assert get_args(FillMode) == FILL_MODES and get_args(TopupMode) == TOPUP_MODES
    table = build_table(np.arange(40, dtype=np.float64)[:, None], ("f",), (3,))
    for s in STRATEGIES:
        assert BatchesConfig(strategy=s).strategy == s
        assert construct_epoch(table, batch_size=8, strategy=s, seed=0, epoch=0).shape == (5, 8)
    for fill in FILL_MODES:
        for topup in TOPUP_MODES:
            b = BatchesConfig(fill=fill, topup=topup)
            assert construct_epoch(
                table, batch_size=8, strategy="constructed", seed=0, epoch=0, fill=b.fill, topup=b.topup
            ).shape == (5, 8)
    for field, bad in (("strategy", "stratified"), ("fill", "random"), ("topup", "coverage")):
        with pytest.raises(ValidationError):
            BatchesConfig(**{field: bad})
    for fill, topup, kind in (("random", "topk", "fill mode"), ("topk", "coverage", "top-up mode")):
        with pytest.raises(UnknownName, match=f"^batches: unknown {kind} "):
            construct_epoch(table, batch_size=8, strategy="constructed", seed=0, epoch=0, fill=fill, topup=topup)
    for name in OPTIMIZERS:
        assert TrainConfig(optimizer=name).optimizer == name
    for name in LOGISTIC_LOSSES:
        assert TrainConfig(g_loss=name).g_loss == name
    for name in set(LOSSES) - set(LOGISTIC_LOSSES):  # registered losses, but no G objective of a logistic D
        with pytest.raises(ValidationError, match="unknown logistic loss"):
            TrainConfig(g_loss=name)


def test_registry_registers_once_and_describes_its_entries():
    reg: Registry = Registry("widget", stage="test")

    @reg.register(name="plain")
    def plain():
        """A plain widget.

        More about it."""

    class Fancy:
        name = "fancy"
        description = "a fancy widget"

    reg.register(Fancy)
    assert reg.names() == ("plain", "fancy") and list(reg) == ["plain", "fancy"] and len(reg) == 2
    assert reg.describe() == [("plain", "A plain widget."), ("fancy", "a fancy widget")]
    with pytest.raises(ValueError, match="widget 'fancy' is already registered"):
        reg.register(Fancy)
    assert reg.unregister("plain") is plain and reg.names() == ("fancy",)
    assert reg.get("plain", None) is None  # with a default, as dict.get
    with pytest.MonkeyPatch.context() as mp:  # tests swap entries in and out
        mp.setitem(reg, "plain", plain)
        mp.setitem(reg, "fancy", "replaced")
        assert reg["plain"] is plain and reg["fancy"] == "replaced"
    assert reg.names() == ("fancy",) and reg["fancy"] is Fancy
    # every registry of the project describes every entry in one line
    for r in REGISTRIES.values():
        rows = r.describe()
        assert [n for n, _ in rows] == list(r.names())
        assert all(d and "\n" not in d for _, d in rows), r


# --- metrics by protocol name ---------------------------------------------------------------------


def test_metric_names_carry_the_sample_count():
    assert metrics_for(10_000).names() == (
        "is10k",
        "fid10k_train",
        "kid10k_train",
        "feature_kl10k_train",
        "feature_js10k_train",
        "feature_outside10k_train",
        "sharpness_mean10k",
        "sharpness_diff10k_train",
    )
    assert metrics_for(1234)["fid1234_train"] is metrics_for(50_000)["fid50k_train"]
    assert parse_metric_name("kid10k_train")[1] == 10_000 and parse_metric_name("is1234")[1] == 1234
    assert parse_metric_name("fid10000_train") is None and parse_metric_name("fid_train") is None
    cfg = EvaluateConfig(samples=2000, metrics="kid2k_train,fid2k_train,kid2k_train")
    assert cfg.metrics == ("fid2k_train", "kid2k_train")  # registration order, once: one key
    assert cfg.key_params()["metrics"] == ["fid2k_train", "kid2k_train"]
    assert "metrics" not in EvaluateConfig(samples=2000).key_params()  # the key artifacts had before
    with pytest.raises(ValidationError, match="fid2k_train needs IS/FID/KID on"):
        EvaluateConfig(samples=2000, metrics="fid2k_train", fidelity=False)


def test_evaluate_flags_infer_samples_and_fidelity_from_metric_names(monkeypatch):
    import flows.machine as fm
    import flows.resolve as fr

    monkeypatch.setattr(fm, "cuda_available", lambda: False)  # CPU defaults: 2,000 samples, no IS/FID/KID
    notes = []
    cfg = fr.resolve_evaluate_config({"metrics": "fid10k_train,kid10k_train"}, note=notes.append)
    assert (cfg.samples, cfg.fidelity, cfg.metrics) == (10_000, True, ("fid10k_train", "kid10k_train"))
    cfg = fr.resolve_evaluate_config({"metrics": "feature_kl1234_train"}, note=notes.append)
    assert (cfg.samples, cfg.fidelity) == (1234, False)
    with pytest.raises(Exception, match=re.escape(metrics_for(500).message("fid2k_train"))):
        fr.resolve_evaluate_config({"metrics": "fid2k_train", "samples": 500}, note=notes.append)
    # a misspelt name is told the names for the count it was written for, the nearest first
    with pytest.raises(Exception, match=re.escape("unknown metric 'fid10k_trian' (did you mean 'fid10k_train'?)")):
        fr.resolve_evaluate_config({"metrics": "fid10k_trian"}, note=notes.append)


def _context(n: int = 64, **cfg) -> fidelity.EvalContext:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    table = build_table(compute_features(train), ("colour_moment", "sharpness"), (4, 4))
    return fidelity.EvalContext(
        images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        cfg=EvaluateConfig(samples=n, **cfg),
        table=table,
        train_sharpness_mean=1e5,
        reference=fidelity.ImageArrayDataset(train),
    )


@pytest.fixture
def calls(monkeypatch):
    """Count the expensive steps: the KL floor, each torch-fidelity feature extraction and metric."""
    import torch_fidelity.metric_fid
    import torch_fidelity.metric_isc
    import torch_fidelity.metric_kid
    import torch_fidelity.utils

    import pipeline.floors

    counts: dict[str, int] = {}

    def spy(module, name, key):
        real = getattr(module, name)

        def wrapper(*a, **k):
            counts[key] = counts.get(key, 0) + 1
            return real(*a, **k)

        monkeypatch.setattr(module, name, wrapper)

    spy(pipeline.floors, "cached_feature_kl_floor", "floor")
    spy(torch_fidelity.utils, "get_featuresdict_from_dataset", "extract")
    spy(torch_fidelity.metric_isc, "isc_featuresdict_to_metric", "is")
    spy(torch_fidelity.metric_fid, "fid_statistics_to_metric", "fid")
    spy(torch_fidelity.metric_kid, "kid_featuresdict_to_metric", "kid")
    return counts


def test_feature_metrics_one_by_one_compute_only_those(calls):
    everything, _ = fidelity.evaluate_images(_context(fidelity=False))
    assert calls == {"floor": 1}
    for name in ("feature_js64_train", "feature_outside64_train", "sharpness_mean64"):
        calls.clear()
        ctx = _context(fidelity=False, metrics=name)
        got, timing = fidelity.evaluate_images(ctx)
        assert got == {name: everything[name]} and calls == {}  # no floor without the KL
        assert ctx.notes["fidelity"].startswith("skipped: not among the metrics")
    got, timing = fidelity.evaluate_images(_context(fidelity=False, metrics="feature_kl64_train"))
    assert set(got) == {"feature_kl64_train", "feature_kl64_train_floor", "feature_kl64_train_floor_sd"}
    assert got == {k: everything[k] for k in got} and calls == {"floor": 1} and set(timing) == {"feature"}
    got, _ = fidelity.evaluate_images(_context(fidelity=False, metrics="sharpness_diff64_train"))
    assert set(got) == {"sharpness_diff64_train", "sharpness_mean_train"}


def test_fidelity_metrics_one_by_one_share_one_extraction(calls):
    """With test_evaluate's tiny extractor: FID and KID together extract the generated and the
    reference images once each; IS alone reads no reference; the values are the full run's."""
    from test_evaluate import TINY  # registers it with torch-fidelity

    kw = dict(feature_extractor=TINY, kid_subsets=5, kid_subset_size=32, isc_splits=2, batch_size=64)
    everything, _ = fidelity.evaluate_images(_context(**kw))
    assert calls["extract"] == 2 and calls["is"] == calls["fid"] == calls["kid"] == 1
    calls.clear()
    got, _ = fidelity.evaluate_images(_context(metrics="fid64_train,kid64_train", **kw))
    assert got == {k: everything[k] for k in ("fid64_train", "kid64_train", "kid64_train_std")}
    assert calls == {"extract": 2, "fid": 1, "kid": 1}
    calls.clear()
    got, _ = fidelity.evaluate_images(_context(metrics="is64", **kw))
    assert got == {k: everything[k] for k in ("is64", "is64_std")} and calls == {"extract": 1, "is": 1}
