"""DCGAN on a torchvision ImageFolder, with random or distribution-matched (constructed) batches.

    python examples/dcgan_any_loop.py --export-demo data/demo-images   # once: the demo's images as an ImageFolder
    python examples/dcgan_any_loop.py --data data/demo-images --strategy constructed
    python examples/dcgan_any_loop.py --data data/demo-images --strategy random

This is pytorch/examples' ``dcgan/main.py`` (the same initialisation, architecture pattern, loss,
optimiser and loop) at 32×32 instead of 64×64 (one up/down-sampling block fewer) with narrower
layers by default (``--ngf``/``--ndf`` 32), so that it trains on a CPU in a minute or two. The only
change to the loop is the four lines marked ``# subsample``: the DataLoader takes its batches from
``subsample.batch_sampler`` (docs/library.md), ``--strategy random`` giving the usual shuffled
batches and ``constructed`` the paper's, and each epoch prints its batches' diagnostics.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision.datasets as dset
import torchvision.transforms as transforms
import torchvision.utils as vutils

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing it

import subsample  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--data", help="an ImageFolder: a folder of class folders of images")
parser.add_argument("--export-demo", metavar="DIR", help="write the demo's images (data/demo) to DIR as an ImageFolder")
parser.add_argument("--strategy", default="constructed", choices=subsample.STRATEGY_NAMES)
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--bins", type=int, nargs=2, default=(8, 8), help="the table's bins (few for small batches)")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--image-size", type=int, default=32)
parser.add_argument("--nz", type=int, default=100, help="size of the latent z vector")
parser.add_argument("--ngf", type=int, default=32)
parser.add_argument("--ndf", type=int, default=32)
parser.add_argument("--lr", type=float, default=0.0002)
parser.add_argument("--beta1", type=float, default=0.5)
parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--outf", help="write real_samples.png and fake_samples_epoch_NNN.png here")


# custom weights initialization called on netG and netD (pytorch/examples)
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        torch.nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        torch.nn.init.normal_(m.weight, 1.0, 0.02)
        torch.nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, nz, ngf, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            # input is Z, going into a convolution
            nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            # state size. (ngf*4) x 4 x 4
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            # state size. (ngf*2) x 8 x 8
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            # state size. (ngf) x 16 x 16
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),
            nn.Tanh(),
            # state size. (nc) x 32 x 32
        )

    def forward(self, input):
        return self.main(input)


class Discriminator(nn.Module):
    def __init__(self, ndf, nc=3):
        super().__init__()
        self.main = nn.Sequential(
            # input is (nc) x 32 x 32
            nn.Conv2d(nc, ndf, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf) x 16 x 16
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf*2) x 8 x 8
            nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            # state size. (ndf*4) x 4 x 4
            nn.Conv2d(ndf * 4, 1, 4, 1, 0, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, input):
        return self.main(input).view(-1, 1).squeeze(1)


def main(argv=None) -> int:
    opt = parser.parse_args(argv)
    if opt.export_demo:
        n = subsample.write_image_folder(REPO / "data" / "demo", opt.export_demo)
        print(f"wrote {n} images to {opt.export_demo}; now: python {sys.argv[0]} --data {opt.export_demo}")
        return 0
    if not opt.data or not Path(opt.data).is_dir() or not any(p.is_dir() for p in Path(opt.data).iterdir()):
        print(
            f"--data {opt.data}: not an ImageFolder (a folder of class folders of images); for the demo's images run "
            f"python {sys.argv[0]} --export-demo data/demo-images, then --data data/demo-images",
            file=sys.stderr,
        )
        return 2
    if opt.image_size != 32:
        print("--image-size: this network is the 32×32 DCGAN; resize your images to 32", file=sys.stderr)
        return 2
    random.seed(opt.seed)
    torch.manual_seed(opt.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    dataset = dset.ImageFolder(
        root=opt.data,
        transform=transforms.Compose(
            [
                transforms.Resize(opt.image_size),
                transforms.CenterCrop(opt.image_size),
                transforms.ToTensor(),
                transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
            ]
        ),
    )
    try:  # subsample: the batches, from the features of what the loader yields
        sampler = subsample.batch_sampler(
            dataset, batch_size=opt.batch_size, strategy=opt.strategy, seed=opt.seed, bins=tuple(opt.bins)
        )
    except subsample.SubsampleError as e:
        print(e, file=sys.stderr)
        return 2
    dataloader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=opt.workers)  # subsample

    netG = Generator(opt.nz, opt.ngf).to(device)
    netG.apply(weights_init)
    netD = Discriminator(opt.ndf).to(device)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    fixed_noise = torch.randn(opt.batch_size, opt.nz, 1, 1, device=device)
    real_label, fake_label = 1, 0
    optimizerD = optim.Adam(netD.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
    if opt.outf:
        Path(opt.outf).mkdir(parents=True, exist_ok=True)

    for epoch in range(opt.epochs):
        sampler.set_epoch(epoch)  # subsample: batches depend on (seed, epoch)
        t0 = time.perf_counter()
        for i, (data, _) in enumerate(dataloader):
            ############################
            # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
            ###########################
            netD.zero_grad()
            real_cpu = data.to(device)
            batch_size = real_cpu.size(0)
            label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype, device=device)
            output = netD(real_cpu)
            errD_real = criterion(output, label)
            errD_real.backward()
            D_x = output.mean().item()

            noise = torch.randn(batch_size, opt.nz, 1, 1, device=device)
            fake = netG(noise)
            label.fill_(fake_label)
            output = netD(fake.detach())
            errD_fake = criterion(output, label)
            errD_fake.backward()
            D_G_z1 = output.mean().item()
            errD = errD_real + errD_fake
            optimizerD.step()

            ############################
            # (2) Update G network: maximize log(D(G(z)))
            ###########################
            netG.zero_grad()
            label.fill_(real_label)  # fake labels are real for generator cost
            output = netD(fake)
            errG = criterion(output, label)
            errG.backward()
            D_G_z2 = output.mean().item()
            optimizerG.step()

            if i % 10 == 0 or i == len(dataloader) - 1:
                print(
                    f"[{epoch}/{opt.epochs}][{i}/{len(dataloader)}] "
                    f"Loss_D: {errD.item():.4f} Loss_G: {errG.item():.4f} "
                    f"D(x): {D_x:.4f} D(G(z)): {D_G_z1:.4f} / {D_G_z2:.4f}"
                )
            if opt.outf and i == 0 and epoch == 0:
                vutils.save_image(real_cpu, f"{opt.outf}/real_samples.png", normalize=True)
        if opt.outf:
            vutils.save_image(
                netG(fixed_noise).detach(), f"{opt.outf}/fake_samples_epoch_{epoch:03d}.png", normalize=True
            )
        d = sampler.diagnostics(epoch)  # subsample: what this epoch's batches were
        print(
            f"epoch {epoch} ({time.perf_counter() - t0:.0f} s): {d['strategy']} batches of {d['batch_size']}: "
            f"feature KL to the data set {d['kl_mean']:.3f} ± {d['kl_sd']:.3f} (a random sample of {d['batch_size']} "
            f"images: {d['floor']:.3f} ± {d['floor_sd']:.3f}); coverage {d['coverage']:.3f}, "
            f"{d['never_drawn']} of {d['n']} images never drawn"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
