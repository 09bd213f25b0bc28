"""A SimCLR training step end to end (images → two views → Conv4 → NT-Xent → Adam): ours
(:class:`bmssl.simclr.SimCLRTrainer`'s ``train_step``: batched views on the training device)
against lightly's SimCLR pieces (``SimCLRTransform`` per image through a ``DataLoader``, then
``NTXentLoss``), the same network (a copy of the trainer's encoder, its own Adam) and batch size.

Recipe: our ``default`` level on 28-px 1-channel glyphs (crop area 0.3–1, flip, brightness and
contrast jitter 0.4 with probability 0.8; no saturation, hue, grayscale or blur for one
channel), which lightly's transform expresses as ``min_scale=0.3, cj_strength=1,
cj_bright=cj_contrast=0.4, cj_sat=cj_hue=0, random_gray_scale=0, gaussian_blur=0``, no
normalisation. lightly reads PIL images: the dataset's images are converted to PIL once,
before timing.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from benchmarks.peers import measure
from benchmarks.peers.views import side_by_side


def _our_trainer(args: Any, device: torch.device):
    from bmssl.simclr import SimCLRConfig, SimCLRTrainer

    config = SimCLRConfig(
        dataset="glyphs",
        width=args.width,
        batch_size=args.simclr_batch,
        augment="default",
        temperature=0.5,
        device=device.type,
        seed=args.seed,
        workers=0,
    )
    return SimCLRTrainer(config, None, progress=False)


def _lightly_step(trainer, args: Any, device: torch.device) -> measure.Fn:
    """lightly's transform through a DataLoader, its NT-Xent, our network and Adam."""
    from lightly.loss import NTXentLoss
    from lightly.transforms import SimCLRTransform
    from torchvision.transforms.functional import to_pil_image

    images = trainer.train_set.get_batch(list(range(len(trainer.train_set))))
    pil = [to_pil_image(img) for img in images]
    transform = SimCLRTransform(
        input_size=images.shape[-1], cj_prob=0.8, cj_strength=1.0, cj_bright=0.4,
        cj_contrast=0.4, cj_sat=0.0, cj_hue=0.0, min_scale=0.3, random_gray_scale=0.0,
        gaussian_blur=0.0, hf_prob=0.5, normalize=None,
    )  # fmt: skip

    class Views(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(pil)

        def __getitem__(self, i: int):
            return transform(pil[i])

    loader = torch.utils.data.DataLoader(
        Views(), batch_size=args.simclr_batch, shuffle=True, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )  # fmt: skip
    encoder = copy.deepcopy(trainer.encoder).to(device).train()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=trainer.config.lr)
    criterion = NTXentLoss(temperature=0.5)
    batches = _endless(loader)

    def step() -> None:
        v1, v2 = (v.to(device, non_blocking=True) for v in next(batches))
        z = encoder(torch.cat([v1, v2]))
        loss = criterion(z[: len(v1)], z[len(v1) :])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _endless(loader):
    while True:
        yield from loader


def run(args: Any, device: torch.device) -> list[dict[str, Any]]:
    """One row: our SimCLR step against lightly's, per-round ratios and peak memory."""
    trainer = _our_trainer(args, device)
    counter = iter(range(10**9))
    fns: dict[str, measure.Fn] = {"ours": lambda: trainer.train_step(next(counter))}
    row: dict[str, Any] = {
        "path": "simclr step",
        "case": f"conv4-{args.width} 28px default views, batch {args.simclr_batch}",
    }
    version, why = measure.peer_version("lightly")
    if version is None:
        row["skipped"] = {"lightly": why}
    else:
        fns["lightly"] = _lightly_step(trainer, args, device)
        row["versions"] = {"lightly": version}
    row["flops"] = measure.count_flops(fns["ours"])
    row.update(side_by_side(fns, args, device))
    return [row]
