"""Models, losses, penalties, optimisers and presets: shapes, published init, hand-computed values."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import TrainConfig
from pipeline.gan.losses import LOSSES, PENALTIES, clip_weights, gradient_penalty, make_optimizer, r1_penalty, weight_l2
from pipeline.gan.models import ARCHITECTURES, ModelSpec, build_discriminator, build_generator, start_size
from pipeline.presets import PRESETS, resolve_batches_config, resolve_train_config
from storage.errors import SubsampleError

# --- models --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,start,k", [(32, 4, 3), (48, 3, 4), (64, 4, 4), (96, 3, 5)])
def test_shapes_for_the_papers_sizes(size, start, k):
    assert start_size(size) == (start, k)
    spec = ModelSpec(image_size=size, ngf=4, ndf=4, z_dim=16)
    G, D = build_generator(spec), build_discriminator(spec)
    x = G(torch.randn(3, 16))
    assert x.shape == (3, 3, size, size)
    assert x.min() >= -1 and x.max() <= 1
    logits = D(x)
    assert logits.shape == (3,)
    # the reference's channel rule: ngf * 2^(k-1) after the projection, halving at each doubling
    first = G.main[0]
    assert isinstance(first, nn.ConvTranspose2d) and first.out_channels == 4 * 2 ** (k - 1)
    assert first.kernel_size == (start, start)


@pytest.mark.parametrize("size", [8, 20, 40, 100, 33])
def test_unsupported_sizes_are_refused(size):
    with pytest.raises(ValueError, match="3·2\\^k or 4·2\\^k"):
        start_size(size)


def test_dcgan_64_matches_pytorch_examples():
    """At 64×64 the layer stack is the reference's: 5 transposed convs 100→512→256→128→64→3."""
    G = build_generator(ModelSpec(image_size=64))
    convs = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(100, 512), (512, 256), (256, 128), (128, 64), (64, 3)]
    assert isinstance(list(G.modules())[-1], nn.Tanh)
    D = build_discriminator(ModelSpec(image_size=64))
    convs = [m for m in D.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in D.modules()) == 3  # none on the first layer
    slopes = {m.negative_slope for m in D.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    assert not any(isinstance(m, nn.Sigmoid) for m in D.modules())


def test_published_init_statistics():
    torch.manual_seed(0)
    G = build_generator(ModelSpec(image_size=32))
    D = build_discriminator(ModelSpec(image_size=32))
    for model in (G, D):
        conv = torch.cat(
            [m.weight.flatten() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        )
        assert abs(conv.mean().item()) < 1e-3 and abs(conv.std().item() - 0.02) < 5e-4
        bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        w = torch.cat([m.weight for m in bn])
        assert abs(w.mean().item() - 1) < 0.01 and abs(w.std().item() - 0.02) < 0.005
        assert all(torch.all(m.bias == 0) for m in bn)


def test_spectral_norm_and_batchnorm_switches():
    sn = build_discriminator(ModelSpec(image_size=32, ndf=8, spectral_norm=True, d_batchnorm=True))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in sn.modules())  # SN replaces BN
    convs = [m for m in sn.modules() if isinstance(m, nn.Conv2d)]
    assert all(nn.utils.parametrize.is_parametrized(c, "weight") for c in convs)
    sn.train()
    for _ in range(30):  # power iterations run in training forward passes
        sn(torch.randn(2, 3, 32, 32))
    sigma = torch.linalg.matrix_norm(convs[1].weight.detach().flatten(1), ord=2)
    assert abs(sigma.item() - 1) < 0.05
    plain = build_discriminator(ModelSpec(image_size=32, ndf=8, d_batchnorm=False))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert plain(torch.randn(2, 3, 32, 32)).shape == (2,)


def test_architecture_registry():
    assert "dcgan" in ARCHITECTURES
    with pytest.raises(SubsampleError, match="unknown architecture 'nope'"):
        build_generator(ModelSpec(arch="nope"))


# --- losses against hand-computed values -----------------------------------------------------------

REAL = torch.tensor([1.0, -2.0])
FAKE = torch.tensor([0.5, 3.0])


def _sp(x: float) -> float:  # softplus, log(1 + e^x)
    return math.log1p(math.exp(x))


@pytest.mark.parametrize(
    "name,d,g",
    [
        ("nonsaturating", ((_sp(-1) + _sp(2)) + (_sp(0.5) + _sp(3))) / 2, (_sp(-0.5) + _sp(-3)) / 2),
        ("minimax", ((_sp(-1) + _sp(2)) + (_sp(0.5) + _sp(3))) / 2, -(_sp(0.5) + _sp(3)) / 2),
        ("lsgan", 0.5 * (0 + 9) / 2 + 0.5 * (0.25 + 9) / 2, 0.5 * (0.25 + 4) / 2),
        ("wasserstein", (0.5 + 3) / 2 - (1 - 2) / 2, -(0.5 + 3) / 2),
        ("hinge", (0 + 3) / 2 + (1.5 + 4) / 2, -(0.5 + 3) / 2),
    ],
)
def test_loss_values(name, d, g):
    loss = LOSSES[name]
    assert loss.d(REAL, FAKE).item() == pytest.approx(d, rel=1e-6)
    assert loss.g(FAKE).item() == pytest.approx(g, rel=1e-6)


def test_logistic_loss_is_bce_on_sigmoid():
    """The published form: BCE(D(x), 1) + BCE(D(G(z)), 0) with D = sigmoid(logit)."""
    bce = F.binary_cross_entropy(torch.sigmoid(REAL), torch.ones(2)) + F.binary_cross_entropy(
        torch.sigmoid(FAKE), torch.zeros(2)
    )
    assert LOSSES["nonsaturating"].d(REAL, FAKE).item() == pytest.approx(bce.item(), rel=1e-5)


class SumD(nn.Module):
    """A one-parameter D: D(x) = w · Σ x^p over each sample."""

    def __init__(self, w: float, power: int):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.power = power

    def forward(self, x):
        return self.w * x.pow(self.power).flatten(1).sum(1)


def test_gradient_penalty_by_hand():
    """Linear D(x) = w Σx: ∇ₓD = w·1 everywhere, so GP = (|w|√d - 1)² whatever ε, and
    dGP/dw = 2(|w|√d - 1)√d·sign(w)."""
    d = 3 * 2 * 2
    D = SumD(0.7, power=1)
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    gp = gradient_penalty(D, real, fake)
    expected = (0.7 * math.sqrt(d) - 1) ** 2
    assert gp.item() == pytest.approx(expected, rel=1e-5)
    gp.backward()
    assert D.w.grad.item() == pytest.approx(2 * (0.7 * math.sqrt(d) - 1) * math.sqrt(d), rel=1e-5)


class RecordingD(SumD):
    """SumD (w Σx²) that keeps the inputs it is called on."""

    def forward(self, x):
        self.seen = x.detach().clone()
        return super().forward(x)


def test_gradient_penalty_uses_interpolates():
    """Quadratic D(x) = w Σx²: ∇D(x̂) = 2w x̂, so the penalty depends on where x̂ lies. Each x̂ D
    saw must lie on the segment from its fake to its real sample (one ε per sample, in [0, 1]),
    the ε uniform over samples, and the penalty (2w||x̂|| - 1)² averaged over those x̂."""
    n = 4000
    D = RecordingD(0.5, power=2)
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(n, 3, 2, 2, generator=g), torch.randn(n, 3, 2, 2, generator=g)
    gp = gradient_penalty(D, real, fake)
    x_hat, r, f = D.seen.double().flatten(1), real.double().flatten(1), fake.double().flatten(1)
    # x̂ = ε r + (1 - ε) f  <=>  x̂ - f = ε (r - f): ε by least squares, then the residual
    eps = ((x_hat - f) * (r - f)).sum(1) / (r - f).pow(2).sum(1)
    assert (x_hat - f - eps[:, None] * (r - f)).abs().max() < 1e-5
    assert eps.min() >= 0 and eps.max() <= 1
    # U[0, 1]: mean 1/2 and variance 1/12, within 5 standard errors (sd 0.289/√n and √(1/80 - 1/144)/√n = 0.0745/√n)
    assert abs(eps.mean().item() - 0.5) < 5 * 0.289 / math.sqrt(n)
    assert abs(eps.var().item() - 1 / 12) < 5 * 0.0745 / math.sqrt(n)
    expected = (2 * 0.5 * x_hat.norm(dim=1) - 1).pow(2).mean()
    assert gp.item() == pytest.approx(expected.item(), rel=1e-5)


def test_r1_penalty_by_hand():
    """D(x) = w Σx²: ∇ₓD = 2w x, R1 = ½ E||2w x||² = 2w² E||x||², dR1/dw = 4w E||x||²."""
    D = SumD(0.3, power=2)
    real = torch.randn(6, 3, 2, 2).requires_grad_(True)
    r1 = r1_penalty(D, real, None, D(real))
    sq = real.detach().flatten(1).pow(2).sum(1).mean().item()
    assert r1.item() == pytest.approx(2 * 0.09 * sq, rel=1e-5)
    r1.backward()
    assert D.w.grad.item() == pytest.approx(4 * 0.3 * sq, rel=1e-5)


def test_weight_l2_and_clipping():
    D = nn.Sequential(nn.Conv2d(1, 2, 1, bias=True), nn.BatchNorm2d(2))
    with torch.no_grad():
        D[0].weight.copy_(torch.tensor([3.0, -4.0]).view(2, 1, 1, 1))
        D[0].bias.fill_(10.0)
    assert weight_l2(D).item() == pytest.approx(25.0)  # biases and BN are not penalised
    clip_weights(D, 0.01)
    assert all(p.abs().max().item() <= 0.01 for p in D.parameters())
    assert set(PENALTIES) == {"gp_weight", "r1_weight", "l2_weight"} <= set(TrainConfig.model_fields)


def test_optimizer_registry():
    p = [nn.Parameter(torch.zeros(2))]
    cfg = TrainConfig(beta1=0.5, beta2=0.9, momentum=0.8)
    adam = make_optimizer("adam", p, 2e-4, cfg)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.5, 0.9) and adam.defaults["lr"] == 2e-4
    assert isinstance(make_optimizer("rmsprop", p, 5e-5, cfg), torch.optim.RMSprop)
    sgd = make_optimizer("sgd", p, 0.1, cfg)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    with pytest.raises(SubsampleError, match="unknown optimizer 'lbfgs'"):
        make_optimizer("lbfgs", p, 0.1, cfg)


# --- presets ------------------------------------------------------------------------------------------


def test_presets_follow_the_spec():
    c = resolve_train_config("paper-constructed")
    b = resolve_batches_config("paper-constructed")
    assert b.strategy == "constructed" and b.batch_size in (1024, 2000, 2048)
    assert c.optimizer == "adam" and c.beta1 == 0.5 and 1e-3 <= c.lr_g <= 2e-3 and 135 <= c.epochs <= 200
    a = resolve_train_config("paper-128a")
    assert (a.optimizer, a.lr_d, a.beta1, a.d_batchnorm, a.loss) == ("adam", 2e-4, 0.5, True, "nonsaturating")
    for name, check in [
        ("paper-128b", lambda c: c.clip and c.gp_weight > 0),
        ("paper-128c", lambda c: c.l2_weight > 0),
        ("paper-128d", lambda c: c.r1_weight > 0),
    ]:
        c = resolve_train_config(name)
        assert c.optimizer == "rmsprop" and 5e-5 <= c.lr_d <= 1e-4 and c.epochs == 25 and check(c)
        assert not c.d_batchnorm
    for name in ("paper-128a", "paper-128b", "paper-128c", "paper-128d"):
        b = resolve_batches_config(name)
        assert (b.batch_size, b.strategy) == (128, "random")
    assert all(p.description and p.source for p in PRESETS.values())


def test_preset_overrides_and_validation():
    c = resolve_train_config("paper-128b", {"lr_d": 1e-4, "clip": None, "epochs": 3})
    assert (c.lr_d, c.clip, c.epochs, c.gp_weight, c.preset) == (1e-4, None, 3, 10.0, "paper-128b")
    b = resolve_batches_config("paper-128a", {"batch_size": 64, "strategy": None})
    assert (b.batch_size, b.strategy) == (64, "random")
    with pytest.raises(SubsampleError, match="lr_dd"):
        resolve_train_config("smoke", {"lr_dd": 1})
    with pytest.raises(SubsampleError, match="unknown loss"):
        resolve_train_config("smoke", {"loss": "nope"})
    with pytest.raises(SubsampleError, match="unknown preset"):
        resolve_train_config("nope")
    # execution-only fields do not change the key
    assert c.key_params() == c.model_copy(update={"device": "cpu", "compile": True, "track": False}).key_params()
    assert c.key_params() != c.model_copy(update={"lr_g": 1.0}).key_params()


def test_presets_command_json(capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as e:
        main(["presets", "--json"])
    assert e.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in out["presets"]} == set(PRESETS)
    assert all({"name", "description", "source", "train", "batches"} <= set(r) for r in out["presets"])
    rows = {r["name"]: r for r in out["presets"]}
    assert rows["paper-constructed"]["per_dataset"] == {"cifar10": {"batches": {"batch_size": 2048}}}
    assert rows["paper-128c"]["train"]["rmsprop_momentum"] == 0.9 and rows["paper-128c"]["paper"]
    assert all(r.get("open") for name, r in rows.items() if name.startswith("paper-"))
