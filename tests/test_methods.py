"""The other seed methods and the common GAN family: every preset trains on tiny data, the
schedules and losses match hand-computed values, conditional models generate the asked-for class,
the semi-supervised head learns, and checkpoints cover the methods' extra state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import stage_home

from pipeline.config import BatchesConfig, FeaturesConfig, TablesConfig
from pipeline.gan.began import began_convergence, began_k_update
from pipeline.gan.methods import METHODS, igan_lr, instance_noise_sigma, logistic_d_one_sided
from pipeline.gan.models import ARCHITECTURES, ModelSpec, build_discriminator, build_generator
from pipeline.gan.plgan import feature_matching, pl_adversarial_g, pl_switch_weight
from pipeline.presets import PRESETS, resolve_train_config
from storage.errors import SubsampleError

NEW_PRESETS = [
    "igan",
    "igan-nclass",
    "pl-gan",
    "pl-gan-semi",
    "decoding-constrained",
    "lsgan",
    "wgan",
    "wgan-gp",
    "sngan",
    "began",
    "sagan",
    "cgan",
    "acgan",
]
S = 16  # image side of the tiny data
TINY = dict(ngf=8, ndf=8, z_dim=8, sample_grid=4, kl_samples=32, track=False, device="cpu")
TABLES = TablesConfig(bins=(4, 4))
BATCHES = BatchesConfig(batch_size=8, strategy="constructed", seed=0)


def two_colours(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: reddish images, class 1: bluish ones, each with a little noise (alternating labels)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels[:, None] == 0, [[200, 40, 40]], [[40, 40, 200]])
    images = base[:, None, None, :] + rng.integers(-30, 31, (n, S, S, 3))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="module")
def data():
    images, labels = two_colours(64)
    return torch.from_numpy(images), torch.from_numpy(labels)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A SUBSAMPLE_HOME with ``tiny`` (64 labelled 16×16 images), its features and 5×5 table, built once."""
    with stage_home(tmp_path_factory, "methods-home", "tiny", *two_colours(64), tables=TABLES) as root:
        yield root


def _trainer(preset: str, n_classes: int = 2, **kw):
    from pipeline.gan.trainer import make_trainer

    cfg = resolve_train_config(preset, {**TINY, **kw})
    uses_labels = ARCHITECTURES[cfg.arch].labels or METHODS[cfg.method].needs_labels(cfg)
    return make_trainer(cfg, S, torch.device("cpu"), n_classes=n_classes if uses_labels else 0), uses_labels


def _batches(n_steps: int, n: int = 64, b: int = 8, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[:b] for _ in range(n_steps)]


# --- every preset: a few steps of the real loop, finite losses, images of the right shape ------------


def test_every_new_preset_is_registered_and_cited():
    assert set(NEW_PRESETS) <= set(PRESETS)
    for name in NEW_PRESETS:
        p = PRESETS[name]
        assert p.description and "\n" not in p.description and p.source
        resolve_train_config(name)  # valid as published


@pytest.mark.parametrize("preset", NEW_PRESETS)
def test_preset_trains_a_few_steps(preset, data):
    from pipeline.gan.trainer import generate, train_epoch

    images, labels = data
    t, uses_labels = _trainer(preset)
    labels = t.method.attach_data(t, images, labels if uses_labels else None)
    steps = 2 * t.cfg.d_steps  # two G steps
    out = train_epoch(t, images, _batches(steps), labels=labels)
    assert (t.step, t.g_steps) == (steps, 2)
    assert np.isfinite(out["d"]).all() and np.isfinite(out["g"]).all()
    extra = t.method.epoch_metrics(t)
    assert all(math.isfinite(v) for v in extra.values())
    x = generate(t.G, t.z_fixed[:4])
    assert x.shape == (4, 3, S, S) and x.min() >= -1 and x.max() <= 1
    # a checkpoint of the method's state round-trips through torch.save with weights_only
    import io

    buf = io.BytesIO()
    torch.save(t.method.state_dict(), buf)
    buf.seek(0)
    t.method.load_state_dict(torch.load(buf, weights_only=True))


# --- schedules and losses against hand-computed values ------------------------------------------------


def test_igan_learning_rate_schedule():
    assert igan_lr(0) == pytest.approx(2e-4 + 1 / 3000, rel=1e-12)  # 5.3333e-4
    assert igan_lr(100) == pytest.approx(2e-4 + 1 / 4000, rel=1e-12)  # 4.5e-4
    assert igan_lr(10**9) == pytest.approx(2e-4, rel=1e-3)
    t, _ = _trainer("igan")
    t.step = 100
    t.method.before_step(t, None, None)
    assert t.opt_d.param_groups[0]["lr"] == pytest.approx(4.5e-4)
    assert t.opt_g.param_groups[0]["lr"] == pytest.approx(1.5 * 4.5e-4)
    assert (t.cfg.real_target, t.cfg.gp_weight, t.cfg.d_steps) == (0.9, 5.0, 3)
    slopes = {m.negative_slope for m in list(t.G.modules()) + list(t.D.modules()) if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.02}
    assert any(isinstance(m, torch.nn.PixelShuffle) for m in t.G.modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in t.G.modules())


def test_instance_noise_anneals_linearly():
    assert instance_noise_sigma(0.1, 0, 100) == pytest.approx(0.1)
    assert instance_noise_sigma(0.1, 50, 100) == pytest.approx(0.05)
    assert instance_noise_sigma(0.1, 150, 100) == 0.0


REAL = torch.tensor([1.0, -2.0])
FAKE = torch.tensor([0.5, 3.0])


def _sp(x: float) -> float:
    return math.log1p(math.exp(x))


def test_one_sided_label_smoothing():
    expected = (0.9 * _sp(-1) + 0.1 * _sp(1) + 0.9 * _sp(2) + 0.1 * _sp(-2)) / 2 + (_sp(0.5) + _sp(3)) / 2
    assert logistic_d_one_sided(REAL, FAKE, 0.9).item() == pytest.approx(expected, rel=1e-6)
    bce = F.binary_cross_entropy_with_logits(REAL, torch.full((2,), 0.9)) + F.binary_cross_entropy_with_logits(
        FAKE, torch.zeros(2)
    )
    assert logistic_d_one_sided(REAL, FAKE, 0.9).item() == pytest.approx(bce.item(), rel=1e-6)


def test_pl_gan_switch_weight_and_mixed_loss():
    assert pl_switch_weight(0.0) == pytest.approx(math.exp(-10))
    assert pl_switch_weight(0.5) == pytest.approx(math.exp(-2.5))  # 0.0821
    assert pl_switch_weight(1.0) == 1.0
    assert pl_switch_weight(2.0) == 1.0  # t is clamped to 1 after T_switch
    # w weights log(1 - D(G(z))) = -softplus(f); 1 - w weights -log D(G(z)) = softplus(-f)
    w = 0.3
    expected = 0.7 * (_sp(-0.5) + _sp(-3)) / 2 + 0.3 * -(_sp(0.5) + _sp(3)) / 2
    assert pl_adversarial_g(FAKE, w).item() == pytest.approx(expected, rel=1e-6)
    assert pl_adversarial_g(FAKE, 0.0).item() == pytest.approx((_sp(-0.5) + _sp(-3)) / 2, rel=1e-6)


def test_pl_gan_weight_follows_the_epoch():
    t, _ = _trainer("pl-gan", epochs=4, pl_switch_epochs=2)
    seen = []
    for epoch in range(4):
        t.epoch = epoch
        t.method.epoch_start(t, 1)
        seen.append(t.method.w)
    assert seen == pytest.approx([math.exp(-10), math.exp(-2.5), 1.0, 1.0])


def test_feature_matching_on_fixed_features():
    real = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # mean (2, 3)
    fake = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # mean (1, 1)
    assert feature_matching(real, fake).item() == pytest.approx(1 + 4)


def test_began_equilibrium_and_convergence_measure():
    k = torch.tensor(0.5)
    assert began_k_update(k, torch.tensor(0.4), torch.tensor(0.1), 0.5, 1e-3).item() == pytest.approx(
        0.5 + 1e-3 * (0.2 - 0.1)
    )
    assert (
        began_k_update(torch.tensor(0.0), torch.tensor(0.1), torch.tensor(5.0), 0.5, 1e-3).item() == 0.0
    )  # clipped at 0
    assert began_k_update(torch.tensor(1.0), torch.tensor(5.0), torch.tensor(0.0), 0.5, 1e-3).item() == 1.0  # and at 1
    assert began_convergence(torch.tensor(0.4), torch.tensor(0.1), 0.5).item() == pytest.approx(0.4 + abs(0.2 - 0.1))
    assert began_convergence(torch.tensor(0.4), torch.tensor(0.5), 0.5).item() == pytest.approx(0.4 + 0.3)


def test_began_step_updates_k_from_the_step_losses(data):
    """After one D and one G step, k = clip(0 + λ_k (γ L(x) - L(G(z)))) with the steps' own losses."""
    images, _ = data
    t, _ = _trainer("began", began_lambda_k=0.1)
    t.method.epoch_start(t, 1)
    real = images[:8].permute(0, 3, 1, 2).float().div(127.5).sub(1)
    rec = t.method.d_step(t, real, None)
    loss_g = t.method.g_step(t, real, None)
    expected = min(1.0, max(0.0, 0.1 * (0.5 * rec[1].item() - loss_g.item())))
    assert t.method.buffers["k"].item() == pytest.approx(expected, abs=1e-7)
    assert rec[0].item() == pytest.approx(rec[1].item())  # k_0 = 0: D's loss is L(x) alone
    m = t.method.epoch_metrics(t)
    assert m["began_M"] == pytest.approx(rec[1].item() + abs(0.5 * rec[1].item() - loss_g.item()), rel=1e-5)


def test_self_attention_matches_the_equations():
    from pipeline.gan.architectures import SelfAttention

    torch.manual_seed(0)
    att = SelfAttention(16)
    x = torch.randn(2, 16, 3, 3)
    assert torch.equal(att(x), x)  # γ = 0 at initialisation
    with torch.no_grad():
        att.gamma.fill_(0.7)
    # the equations in numpy, position by position, from the 1×1 convolutions' weight matrices
    wf, wg, wh, wv = (m.weight.detach().double().numpy()[:, :, 0, 0] for m in (att.f, att.g, att.h, att.v))
    assert wf.shape == wg.shape == (2, 16) and wh.shape == (8, 16) and wv.shape == (16, 8)  # C/8, C/2, back to C
    xs = x.double().numpy().reshape(2, 16, 9)  # (N, C, positions)
    expected = np.empty_like(xs)
    for b in range(2):
        for j in range(9):
            s = np.array([(wf @ xs[b, :, i]) @ (wg @ xs[b, :, j]) for i in range(9)])  # s_ij, no 1/√d
            beta = np.exp(s - s.max()) / np.exp(s - s.max()).sum()  # β_j,i: softmax over i
            o = sum(beta[i] * (wh @ xs[b, :, i]) for i in range(9))
            expected[b, :, j] = xs[b, :, j] + 0.7 * (wv @ o)
    np.testing.assert_allclose(att(x).detach().double().numpy().reshape(2, 16, 9), expected, atol=1e-5)


# --- conditional models ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cgan", "acgan", "igan-nclass"])
def test_conditional_generators_make_the_requested_class(arch):
    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, image_size=S, z_dim=8, ngf=8, ndf=8, n_classes=3)
    G = build_generator(spec).eval()
    z, y = torch.randn(6, 8), torch.tensor([2, 0, 1, 1, 2, 0])
    with torch.no_grad():
        x = G(z, y)
        assert x.shape == (6, 3, S, S)
        for i in range(6):  # each sample depends on its own (z, y) only
            assert torch.allclose(x[i], G(z[i : i + 1], y[i : i + 1])[0], atol=1e-5)
        assert not torch.allclose(G(z, (y + 1) % 3), x)  # the class changes the image
        assert torch.allclose(G(z), G(z, torch.arange(6) % 3))  # G(z) cycles through the classes
        if arch == "igan-nclass":  # one branch per class
            for i in range(6):
                assert torch.allclose(x[i], G.branches[int(y[i])](z[i : i + 1])[0], atol=1e-5)
            D = build_discriminator(spec)
            d = D(x, y)
            assert d.shape == (6,) and len(D.heads) == 3
            assert torch.allclose(d[1], D.heads[0](x[1:2])[0], atol=1e-5)
    D = build_discriminator(spec)
    out = D(x, y) if ARCHITECTURES[arch].d_conditional else D(x)
    assert out.shape == ((6, 1 + 3) if arch == "acgan" else (6,))


def test_semi_supervised_head_beats_chance(data):
    """Two constant-colour classes, half of the training labels, 30 steps: D's (N+1)-class head
    classifies the held-out images far above chance (1/2)."""
    from pipeline.gan.trainer import train_epoch

    images, labels = data
    t, _ = _trainer("pl-gan-semi", labelled_fraction=0.5, semi_test_fraction=0.25, lr_d=1e-3)
    train_labels = t.method.attach_data(t, images, labels)
    test = t.method.test_labels
    assert len(test) == 16 and (train_labels >= 0).sum() == 24  # 16 held out, half of the other 48 labelled
    assert t.method.test_accuracy(t) < 0.6  # untrained: chance
    out = train_epoch(t, images, _batches(30, b=16), labels=train_labels)
    assert np.isfinite(out["d"]).all()
    acc = t.method.epoch_metrics(t)["semi_test_accuracy"]
    assert acc >= 0.9


def test_methods_refuse_what_they_cannot_train():
    with pytest.raises(SubsampleError, match="cannot train arch 'dcgan'"):
        _trainer("began", arch="dcgan")
    with pytest.raises(SubsampleError, match="does not use gp_weight"):
        _trainer("acgan", gp_weight=1.0)
    with pytest.raises(SubsampleError, match="dcgan-semi and labelled_fraction"):
        _trainer("pl-gan", labelled_fraction=0.1)
    with pytest.raises(SubsampleError, match="logistic loss"):
        _trainer("wgan", real_target=0.9)
    with pytest.raises(SubsampleError, match="unknown method"):
        resolve_train_config("smoke", {"method": "nope"})


def test_labels_missing_is_one_clear_error(home, monkeypatch):
    from pipeline.stages.train import class_labels
    from storage.store import open_store, write_store

    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    write_store("unlabelled", two_colours(8)[0])
    cfg = resolve_train_config("cgan")
    with pytest.raises(SubsampleError, match="data set unlabelled .* has none"):
        class_labels(cfg, open_store("unlabelled"), "unlabelled")
    assert class_labels(resolve_train_config("lsgan"), open_store("unlabelled"), "unlabelled") is None
    assert class_labels(cfg, open_store("tiny"), "tiny").tolist()[:4] == [0, 1, 0, 1]


# --- through the stage: labels from the store, method metrics, generator loading, exact resume --------


def _train(preset: str, **kw):
    from pipeline.stages.train import run_train

    run = {k: kw.pop(k) for k in ("resume", "refresh") if k in kw}
    cfg = resolve_train_config(preset, {**TINY, "epochs": 2, **kw})
    return run_train("tiny", cfg, BATCHES, TABLES, FeaturesConfig(), progress=False, **run)


@pytest.mark.parametrize(
    "preset,metrics",
    [
        ("pl-gan-semi", {"pl_w", "semi_test_accuracy", "d_real_prob"}),
        ("began", {"began_k", "began_M", "d_real_recon", "d_fake_recon"}),
        ("igan-nclass", {"d_real_prob"}),
    ],
)
def test_presets_through_the_stage(home, monkeypatch, preset, metrics):
    import json

    from pipeline.stages.generators import load_generator

    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    s = _train(preset, max_steps=6)
    assert s["steps"] == 6 and math.isfinite(s["loss_d"]) and math.isfinite(s["loss_g"])
    lines = [json.loads(x) for x in open(f"{s['path']}/metrics.jsonl")]
    assert metrics <= set(lines[-1]) and all(math.isfinite(lines[-1][m]) for m in metrics)
    G, info = load_generator(s["key"])
    assert info["model"]["n_classes"] == (2 if ARCHITECTURES[info["model"]["arch"]].labels else 0)
    assert G(torch.randn(3, info["z_dim"])).shape == (3, 3, S, S)


@pytest.mark.slow  # two trainings per method; the largest items of this module by --durations
@pytest.mark.parametrize("preset", ["decoding-constrained", "began"])
def test_kill_and_resume_covers_the_methods_state(home, monkeypatch, preset):
    """An extra module and optimiser (decoding-constrained's encoder) or buffer (BEGAN's k_t):
    one epoch, a kill, --resume, bit-for-bit the losses and weights of an uninterrupted run."""
    import pipeline.stages.train_loop as train_loop

    monkeypatch.setenv("SUBSAMPLE_HOME", str(home))
    straight = _train(preset, seed=4)
    a = torch.load(f"{straight['path']}/checkpoint.pt", weights_only=True)
    real_save = train_loop.save_checkpoint

    def save_then_die(t, path):
        real_save(t, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(preset, seed=4, refresh=True)
    monkeypatch.setattr(train_loop, "save_checkpoint", real_save)
    resumed = _train(preset, seed=4, refresh=True, resume=True)
    b = torch.load(f"{resumed['path']}/checkpoint.pt", weights_only=True)
    assert resumed["resumed_from_epoch"] == 1
    assert a["history"]["loss_d"] == b["history"]["loss_d"] and a["history"]["loss_g"] == b["history"]["loss_g"]
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
    assert a["method"]["buffers"].keys() == b["method"]["buffers"].keys()
    for k in a["method"]["buffers"]:
        assert torch.equal(a["method"]["buffers"][k], b["method"]["buffers"][k])
    for name, sd in a["method"]["modules"].items():
        assert all(torch.equal(sd[k], b["method"]["modules"][name][k]) for k in sd)
