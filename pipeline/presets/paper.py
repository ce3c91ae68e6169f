"""The paper's experiments as presets: the method (``paper-constructed``, ``paper-constructed-1024``;
with ``--strategy random`` the paper's unstarred rows of Tables 3-4) and strategies (a)-(d) of its
Tables 5-6 (``paper-128a`` … ``paper-128d``). Each quotes the paper's sentence it follows."""

from __future__ import annotations

from pipeline.presets.base import Preset, register_preset

# --- the paper's experiments (Chen et al. 2021, Section 3) -----------------------------------------
# `paper` quotes the sentence of the paper (../shared/seeds/000_605aa03c41cbea61.txt) each preset
# follows, in Chinese with an English rendering, with its section and table; `open` lists what the
# paper leaves open and the value taken here.

_SPEC = "Chen et al. 2021 (Acta Automatica Sinica 47(4)), §3.2, quoted from ../shared/seeds/000_605aa03c41cbea61.txt"
_CONSTRUCTED_QUOTE = (
    "§3.2 1): “对于 Cifar10 数据集分别构建了 Batchsize 为 1024 和 2048 的子样本集. 选取的学习率调参范围为 "
    "0.001 ~ 0.002 之间, 动量因子为 0.5, 使用 BGD.” (“For CIFAR-10, subsample sets of Batchsize 1024 and 2048 "
    "were built [2000 for the cartoon faces]. The learning rate was tuned within 0.001-0.002, the momentum factor "
    "0.5, with BGD [large-batch gradient descent].”); Tables 3-4 give the epochs: 1024 and 1024*: 135 (cartoon "
    "faces), 100 (CIFAR-10); 2000/2048 and 2000*/2048*: 200; the same for the random (unstarred) rows."
)
_COMPARED_QUOTE = (
    "§3.2 2): “包括 D 网络批规范化 (BN)、Adam、SGD, 对应表中 128 (a); D 网络权重剪枝结合 D 网络损失函数 1 中心梯度"
    "惩罚代替原训练方法、RMSProp、SGD, 对应表中 128 (b); D 网络权重参数正则化代替原训练方法、RMSProp、SGD 对应表中 "
    "128 (c); D 网络真实样本对应的损失函数 0 中心梯度惩罚代替原训练方法、RMSProp、SGD 对应表中 128 (d)。RMSProp "
    "优化方法的学习率调参范围为 0.00005 ~ 0.0001, 动量因子为 0.9。” (“(a): batch norm in D, Adam, SGD [ref. 7, "
    "DCGAN]; (b): D's weights clipped [权重剪枝, literally 'pruned'] together with a 1-centred gradient penalty in "
    "D's loss, RMSProp, SGD; (c): regularisation of D's weights, RMSProp, SGD; (d): a 0-centred gradient penalty on "
    "D's loss for real samples, RMSProp, SGD. RMSProp's learning rate was tuned within 0.00005-0.0001, its momentum "
    "factor 0.9.”); Tables 5-6: 128 (a)-(d), 25 epochs each."
)
_TOPUP_QUOTE = (
    "§2.2: “随机选取前 k 个高频概率, 计算出它们的比重再对这 Batchsize − num_i 进行补齐” (“randomly choose among "
    "the top k high-frequency probabilities, compute their proportions and fill the Batchsize − num_i shortfall”) "
    "-> topup random (a multinomial over the k most frequent cells); k is not given"
)
_G_LOSS = (
    "G loss: the non-saturating -log D(G(z)) (DCGAN's; the minimax form saturates early); the paper prints "
    "the minimax log(1 - D(G(z))) (its Eq. 1): --set g_loss=minimax trains that"
)
_RMSPROP = (
    "RMSProp's 动量因子 (momentum factor) 0.9: read as momentum 0.9 with torch's squared-gradient decay alpha "
    "0.99 (the paper ran TensorFlow 1.4, whose RMSProp has both a decay, default 0.9, and a momentum, default 0: "
    "'momentum factor 0.9' could also be that decay with no momentum; docs/spec.md §6 records the reading; "
    "--set rmsprop_momentum=0 gives the other)"
)
_ADAM = {"optimizer": "adam", "beta1": 0.5, "loss": "nonsaturating"}
_PAPER_BATCHES = {"top_k": 8, "topup": "random"}  # the paper's top-up, for any constructed cell of a paper-* preset


def _paper_source(quote: str, followed: str, open_: tuple[str, ...]) -> str:
    return f"{_SPEC}: {quote} Followed: {followed}. Open in the paper, our choice: " + "; ".join(open_)


_PC_OPEN = (
    "lr within 0.001-0.002: 2e-3 for B = 2000/2048 (large batches take larger steps)",
    "epochs within 135-200: 200 (the top, so the comparison is not cut short)",
    "k of the top-up: 8",
    _G_LOSS,
)
register_preset(
    Preset(
        "paper-constructed",
        "the paper's method: constructed batches (random top-up), B=2000 "
        "(2048 on CIFAR-10), DCGAN, Adam lr 2e-3 beta1 0.5, 200 epochs",
        _paper_source(
            _CONSTRUCTED_QUOTE,
            "constructed batches with the paper's random top-up, B = 2000 and 2048 on CIFAR-10, Adam beta1 0.5",
            _PC_OPEN,
        ),
        train={**_ADAM, "lr_g": 2e-3, "lr_d": 2e-3, "epochs": 200},
        batches={"strategy": "constructed", "batch_size": 2000, **_PAPER_BATCHES},
        per_dataset={"cifar10": {"batches": {"batch_size": 2048}}},
        paper=_CONSTRUCTED_QUOTE + " " + _TOPUP_QUOTE,
        open=_PC_OPEN,
    )
)
_P1024_OPEN = (
    "lr within 0.001-0.002: 1e-3 (half of B = 2000's 2e-3, as B is halved)",
    "epochs on data sets the paper did not run at 1024 (CelebA, others): 135",
    "k of the top-up: 8",
    _G_LOSS,
)
register_preset(
    Preset(
        "paper-constructed-1024",
        "the paper's 1024* runs: constructed batches (random top-up), B=1024, DCGAN, Adam lr 1e-3 beta1 0.5, "
        "100 epochs on CIFAR-10, 135 on cartoon faces",
        _paper_source(
            _CONSTRUCTED_QUOTE,
            "B = 1024; the 1024 and 1024* rows' epochs, 100 on CIFAR-10 (Table 4) and 135 on the cartoon faces "
            "(Table 3)",
            _P1024_OPEN,
        ),
        train={**_ADAM, "lr_g": 1e-3, "lr_d": 1e-3, "epochs": 135},
        batches={"strategy": "constructed", "batch_size": 1024, **_PAPER_BATCHES},
        per_dataset={"cifar10": {"train": {"epochs": 100}}, "anime-faces": {"train": {"epochs": 135}}},
        paper=_CONSTRUCTED_QUOTE + " " + _TOPUP_QUOTE,
        open=_P1024_OPEN,
    )
)
_A_OPEN = ("lr, beta1 and batch norm of Radford et al. 2016 §4: Adam lr 2e-4, beta1 0.5", _G_LOSS)
register_preset(
    Preset(
        "paper-128a",
        "comparison (a): DCGAN as published, BN in D, Adam lr 2e-4 beta1 0.5, random B=128, 25 epochs",
        _paper_source(
            _COMPARED_QUOTE, "strategy (a): random batches, B = 128, 25 epochs, batch norm in D, Adam", _A_OPEN
        ),
        train={**_ADAM, "d_batchnorm": True, "lr_g": 2e-4, "lr_d": 2e-4, "epochs": 25},
        batches={"strategy": "random", "batch_size": 128, **_PAPER_BATCHES},
        paper=_COMPARED_QUOTE,
        open=_A_OPEN,
    )
)
_B_OPEN = (
    "the loss: Wasserstein critic (clipping and the 1-centred penalty are WGAN's and WGAN-GP's)",
    "clip c = 0.01 and 5 critic steps per G step (Arjovsky et al. 2017, Algorithm 1), lambda = 10 (Gulrajani et al. "
    "2017), no batch norm in D (Gulrajani et al. §4), RMSProp lr 5e-5 (the bottom of 5e-5-1e-4, WGAN's)",
    "budget: each critic step takes a batch (Algorithm 1), so 25 epochs make a fifth of the G updates of (a), (c), "
    "(d); `subsample compare --design paper` trains it 125 epochs so the G updates are equal",
    "clipping and the 1-centred penalty together: measured (bench/clip_gradient_norm.py, CIFAR-10 subset, 150 D "
    "steps), clipping at 0.01 does not keep this critic's input gradients below norm 1: with fan-ins of 48-4,096 "
    "the norm at the interpolates is 0.03 at initialisation and 1.5-2.1 from 50 steps on, with 29-46 % of D's "
    "weights held at +-0.01, so both constraints are active and pull against each other (the penalty towards norm "
    "1, the clipping on each weight). Kept as the paper states it; --set clip=null gives WGAN-GP, --set "
    "gp_weight=0 WGAN",
    _RMSPROP,
)
register_preset(
    Preset(
        "paper-128b",
        "comparison (b): Wasserstein loss, weight clipping 0.01 + 1-centred "
        "GP λ=10, RMSProp 5e-5 momentum 0.9, 5 D steps, random B=128, 25 epochs",
        _paper_source(
            _COMPARED_QUOTE,
            "strategy (b): random batches, B = 128, 25 epochs, weight clipping with a 1-centred "
            "gradient penalty, RMSProp",
            _B_OPEN,
        ),
        train={
            "loss": "wasserstein",
            "d_batchnorm": False,
            "clip": 0.01,
            "gp_weight": 10.0,
            "d_steps": 5,
            "optimizer": "rmsprop",
            "rmsprop_momentum": 0.9,
            "lr_g": 5e-5,
            "lr_d": 5e-5,
            "epochs": 25,
        },
        batches={"strategy": "random", "batch_size": 128, **_PAPER_BATCHES},
        paper=_COMPARED_QUOTE,
        open=_B_OPEN,
    )
)
_C_OPEN = (
    "the L2 weight: 1e-4 (Kurach et al. 2019 sweep L2 weights from 1e-4 up)",
    "RMSProp lr 1e-4 (the top of 5e-5-1e-4), no batch norm in D (a weight penalty with BN's rescaling is moot)",
    _RMSPROP,
    _G_LOSS,
)
register_preset(
    Preset(
        "paper-128c",
        "comparison (c): L2 on D's weights (1e-4), no BN in D, RMSProp 1e-4 momentum 0.9, random B=128, 25 epochs",
        _paper_source(
            _COMPARED_QUOTE,
            "strategy (c): random batches, B = 128, 25 epochs, L2 regularisation of D's weights, RMSProp",
            _C_OPEN,
        ),
        train={
            "loss": "nonsaturating",
            "d_batchnorm": False,
            "l2_weight": 1e-4,
            "optimizer": "rmsprop",
            "rmsprop_momentum": 0.9,
            "lr_g": 1e-4,
            "lr_d": 1e-4,
            "epochs": 25,
        },
        batches={"strategy": "random", "batch_size": 128, **_PAPER_BATCHES},
        paper=_COMPARED_QUOTE,
        open=_C_OPEN,
    )
)
_D_OPEN = (
    "gamma = 10 and RMSProp lr 1e-4 as in Mescheder et al. 2018 §4, no batch norm in D",
    _RMSPROP,
    _G_LOSS,
)
register_preset(
    Preset(
        "paper-128d",
        "comparison (d): R1 zero-centred penalty on real data γ=10, "
        "no BN in D, RMSProp 1e-4 momentum 0.9, random B=128, 25 epochs",
        _paper_source(
            _COMPARED_QUOTE,
            "strategy (d): random batches, B = 128, 25 epochs, zero-centred gradient penalty on "
            "real data (R1), RMSProp",
            _D_OPEN,
        ),
        train={
            "loss": "nonsaturating",
            "d_batchnorm": False,
            "r1_weight": 10.0,
            "optimizer": "rmsprop",
            "rmsprop_momentum": 0.9,
            "lr_g": 1e-4,
            "lr_d": 1e-4,
            "epochs": 25,
        },
        batches={"strategy": "random", "batch_size": 128, **_PAPER_BATCHES},
        paper=_COMPARED_QUOTE,
        open=_D_OPEN,
    )
)
