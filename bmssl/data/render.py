"""Batched rendering of SSL views (:class:`bmssl.data.views.SSLViews`), block by block.

The rows of a batch are sorted into blocks of images that take the same jitter shape: the same
jitter flag, and the hue and the saturation at the same slot of their op order. A block then
runs each step as a few whole-block tensor ops; on the CPU its tensors (at most
:data:`CPU_BLOCK` images) stay in cache from the first op to the last, which is most of the speed.
Per block:

1. geometry. Crop levels resize separably: an output row is a weighted bag of input rows (two
   when upscaling, :func:`resize_taps`; one ``embedding_bag`` call over the batch), then a
   transposition, then columns the same way, leaving the block transposed (``[k, C, x, y]``);
   every colour op is pointwise and does not mind. ``affine`` warps the batch once with
   ``grid_sample`` (nearest, zero fill).
2. colour, in place: at each jitter slot the hue, the saturation, or one scale-and-shift that
   serves brightness and contrast rows alike; then grayscale.
3. output. Rows without blur are transposed back into place; blurred rows take a blur pass along
   their outer axis, the transposition back, and a second pass.

Every per-row parameter is laid out on the device once per call (:func:`plan`); nothing here
draws random numbers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from bmssl.data import photometric

if TYPE_CHECKING:
    from bmssl.data.views import ViewParams

#: Most images per block on the CPU (a block's working tensors then stay in the caches); on
#: other devices a block is a whole group, for fewer and larger kernels.
CPU_BLOCK = 24


@dataclass(frozen=True)
class Block:
    """Rows ``start:stop`` of the sorted order, sharing their jitter flag and hue slot (-1:
    none); row ranges and indices inside are block-local."""

    start: int
    stop: int
    jitter: bool
    hue_slot: int
    scaled: tuple[bool, ...]  # per slot: any row taking brightness or contrast there
    contrast: tuple[bool, ...]  # per slot: any row taking contrast there
    saturation: tuple[tuple[tuple[int, int], ...], ...]  # per slot: runs of rows saturated there
    gray: tuple[tuple[int, int], ...]  # runs of rows turned gray (one per blur flag)
    blur_from: int  # the rows from here on are blurred


@dataclass(frozen=True)
class Plan:
    """Rows sorted into blocks, and the per-row tensors of the ops (sorted, on the device).

    Filters along an axis are bags of ``k`` weighted input rows per output row
    (:func:`photometric.bag_rows`): ``resize`` holds the taps per sample ``K`` and the flat
    indices and weights (``K·C·S`` per image) of the row pass (into the batch) and of the column
    pass (into the block); ``blur`` the Gaussian taps per image and the block-local indices of its
    two passes.
    """

    order: torch.Tensor  # [n] the input row of each sorted row
    blocks: tuple[Block, ...]
    scale: torch.Tensor  # [n_ops, n, 1, 1, 1] brightness or contrast factor at a slot, else 1
    contrast: torch.Tensor  # [n_ops, n, C] (1 − f)·luma weights where contrast, else 0
    saturation: torch.Tensor  # [n, 1, 1, 1] saturation factor
    hue: torch.Tensor  # [n, 3, 1, 1] photometric.hue_offsets of the hue shifts
    resize: tuple  # rows: taps per sample, index, weight; columns: the same
    blur: tuple[torch.Tensor, ...]  # taps [n, k]; indices of pass 1 (axis 2), pass 2 (axis 3)
    offsets: dict[int, torch.Tensor]  # taps per bag k: 0, k, 2k, ...


def _runs(flags: list[bool]) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` of each run of True in ``flags``."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return tuple(runs)


def resize_taps(
    start: torch.Tensor, length: torch.Tensor, size_out: int, flip: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Taps ``[n, size_out, K]`` and weights of resizing the span ``[start, start + length)``
    of an axis to ``size_out`` samples: torch's antialiased bilinear (``resize``'s), ``K`` the
    most taps any sample needs, unused taps weighted 0; ``flip`` reverses the samples.

    With ``s = length/size_out``, sample ``u`` is centred at ``c = s·(u + ½)`` (span pixels) and
    reads pixels ``⌊c − r + ½⌋ .. ⌊c + r + ½⌋ − 1`` (clipped to the span), ``r = max(s, 1)``,
    with weights ``max(0, 1 − |j − c + ½|/r)`` normalised: plain bilinear with the border pixel
    repeated when upscaling (2 taps), a triangle filter ``s`` pixels wide when downscaling.
    """
    n = len(start)
    u = torch.arange(size_out, dtype=torch.float64).expand(n, -1)
    if flip is not None:
        u = torch.where(flip[:, None], size_out - 1 - u, u)
    scale = (length / size_out)[:, None]
    reach = scale.clamp(min=1.0)
    centre = scale * (u + 0.5)
    first = (centre - reach + 0.5).floor_().clamp_(min=0.0)
    count = torch.minimum((centre + reach + 0.5).floor_(), length[:, None]).sub_(first)
    # Laid out [n, K, size_out] (samples innermost, which the ops vectorise), returned transposed.
    j = torch.arange(int(count.max()), dtype=torch.float64).view(1, -1, 1)
    pixel = first.unsqueeze(1) + j
    weight = (pixel - centre.unsqueeze(1) + 0.5).abs_().div_(reach.unsqueeze(1)).neg_().add_(1.0)
    # Taps past the window weigh 0 already; those past the span's end are cut off.
    weight.clamp_(min=0.0).mul_((length[:, None, None] - pixel).clamp_(0.0, 1.0))
    weight.div_(weight.sum(1, keepdim=True))
    taps = torch.minimum(pixel, (length - 1)[:, None, None]).add_(start[:, None, None])
    index = torch.empty(n, size_out, taps.shape[1], dtype=torch.long)
    return index.copy_(taps.transpose(1, 2)), weight.transpose(1, 2).contiguous()


def _bags(image: torch.Tensor, c: int, size_in: int, taps: torch.Tensor) -> torch.Tensor:
    """Flat row indices ``[m·c·A·k]`` of bags for ``taps [m or 1, A, k]`` into the rows of
    images ``image [m]`` (``c`` channels of ``size_in`` rows each)."""
    rows = (image.view(-1, 1) * c + torch.arange(c)).view(-1, c, 1, 1) * size_in
    return (rows + taps.unsqueeze(1)).reshape(-1)


def _per_channel(weight: torch.Tensor, c: int, like: torch.Tensor) -> torch.Tensor:
    """Per-image tap weights ``[m, A, k]`` repeated for ``c`` channels, flat, as bags take them."""
    weight = weight.to(like.device, like.dtype)
    return weight.unsqueeze(1).expand(-1, c, -1, -1).reshape(-1)


@functools.lru_cache(maxsize=16)
def _blur_bags(
    m: int, c: int, size: tuple[int, int], taps: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """Block-local bag indices of the blur's two passes (along axis 2, then 3) for up to ``m``
    images: the same for every block, so made once."""
    span = torch.arange(m)
    return tuple(
        _bags(span, c, axis, photometric.reflect_taps(axis, taps)[None]).to(device) for axis in size
    )


@functools.lru_cache(maxsize=16)
def _offsets(rows: int, k: int, device: torch.device) -> torch.Tensor:
    """``0, k, 2k, …``: the start of each of ``rows`` bags of ``k`` taps."""
    return torch.arange(0, rows * k, k, device=device)


def _blocks(p: ViewParams, order: torch.Tensor, group: torch.Tensor, limit: int) -> list:
    """Each group (sorted) cut into near-equal blocks of at most ``limit`` rows."""
    jitter, gray, blur = (t[order].tolist() for t in (p.jitter, p.gray, p.blur))
    kinds = torch.where(p.jitter[order, None], p.order[order], -1).tolist()  # -1: no jitter
    blocks, first = [], 0
    for size in torch.unique_consecutive(group[order], return_counts=True)[1].tolist():
        parts = -(-size // limit)
        for q in range(parts):
            a, e = first + size * q // parts, first + size * (q + 1) // parts
            slots = list(zip(*kinds[a:e]))  # per slot: each row's op
            hue = [slot for slot, ops in enumerate(slots) if ops == (3,) * (e - a)]
            blocks.append(
                Block(a, e, jitter[a], hue[0] if hue else -1,
                      tuple(0 in ops or 1 in ops for ops in slots),
                      tuple(1 in ops for ops in slots),
                      tuple(_runs([op == 2 for op in ops]) for ops in slots),
                      _runs(gray[a:e]),
                      blur[a:e].index(True) if True in blur[a:e] else e - a)
            )  # fmt: skip
        first += size
    return blocks


def plan(
    batch: torch.Tensor, p: ViewParams, crop_size: int | None, blur_kernel: int, blurs: bool
) -> Plan:
    """Sort the rows into blocks and lay out their parameters on the batch's device.

    Rows group by jitter flag and the slots of hue and saturation, so the hue (the costly op)
    and the saturation run on whole blocks, and brightness and contrast, which mix within a
    slot, are one scale-and-shift. Within a group blurred rows come last and gray rows last
    again, so a block's blurred rows are one slice.
    """
    n, c, height, width = batch.shape
    device = batch.device
    slots = p.order.argsort(1)  # slots[i, op]: where op comes in image i's order
    group = torch.where(p.jitter, 0, 1)
    if p.order.shape[1] == 4:
        group = torch.where(p.jitter, slots[:, 3] * 4 + slots[:, 2], 16)
    # The group fixes the saturation slot already: a block's gray rows are one run per blur flag.
    order = torch.argsort((group * 2 + p.blur.long()) * 2 + p.gray.long(), stable=True)
    limit = CPU_BLOCK if device.type == "cpu" else n
    blocks = _blocks(p, order, group, limit)
    jit, ops = p.jitter[order, None], p.order[order]
    scale = torch.where(jit & (ops < 2), p.factors[order].gather(1, ops), 1.0)
    sizes = torch.tensor([b.stop - b.start for b in blocks])
    local = torch.arange(n) - torch.tensor([b.start for b in blocks]).repeat_interleave(sizes)
    resize: tuple = ()
    size = (height, width)
    if crop_size is not None:
        top, left, h, w = p.crop[order].double().unbind(1)
        size = (crop_size, crop_size)
        rows, row_w = resize_taps(top, h, crop_size)
        cols, col_w = resize_taps(left, w, crop_size, p.flip[order])
        resize = (rows.shape[2], _bags(order, c, height, rows).to(device),
                  _per_channel(row_w, c, batch), cols.shape[2],
                  _bags(local, c, width, cols).to(device), _per_channel(col_w, c, batch))  # fmt: skip
    blur: tuple[torch.Tensor, ...] = ()
    if blurs:
        taps = photometric.gaussian_weights(p.sigma[order], blur_kernel).to(device, batch.dtype)
        blur = (taps, *_blur_bags(max(limit, 1), c, size, blur_kernel, device))
    most = max(limit, int(sizes.max())) * c * max(size)
    bag_sizes = {2, blur_kernel, *resize[::3]}

    def put(t: torch.Tensor, *shape: int) -> torch.Tensor:
        return t.reshape(shape).to(device, batch.dtype)

    return Plan(
        order.to(device), tuple(blocks), put(scale.t(), -1, n, 1, 1, 1),
        _contrast(p, order, c, batch), put(p.factors[order, 2], n, 1, 1, 1),
        put(photometric.hue_offsets(p.factors[order, 3]), n, 3, 1, 1), resize, blur,
        {k: _offsets(most, k, device) for k in bag_sizes},
    )  # fmt: skip


def _contrast(p: ViewParams, order: torch.Tensor, c: int, like: torch.Tensor) -> torch.Tensor:
    """``[n_ops, n, C]``: ``(1 − f)`` times the luma weights (1 for one channel) where an image's
    op at a slot is contrast, else 0, so that the contrast shift is one dot product with the
    channel means."""
    ops = p.order[order].t()  # [n_ops, n]
    f = p.factors[order, 1]
    weights = torch.tensor(photometric.LUMA if c == 3 else (1.0,), dtype=torch.float64)
    coef = ((ops == 1) & p.jitter[order]) * (1 - f)
    return (coef.unsqueeze(2) * weights).to(like.device, like.dtype)


def affine_warp(batch: torch.Tensor, p: ViewParams) -> torch.Tensor:
    """RandomAffine (and flips) as one nearest-neighbour ``grid_sample`` with zero fill.

    In normalised coordinates (``align_corners=False``) output point ``q`` samples the input at
    ``θ·q``, ``θ`` the inverse of torchvision's affine ``T·C·R·S·Sh·C⁻¹`` about the image centre
    composed with the flip ``x → −x``, built per image in float64 on the CPU; the grid is
    ``θ·(x, y, 1)`` summed from a part varying along rows and one varying along columns.
    """
    n, _, height, width = batch.shape
    rot, sx = torch.deg2rad(p.angle), torch.deg2rad(p.shear)
    a, b = torch.cos(rot), -(torch.cos(rot) * torch.tan(sx) + torch.sin(rot))
    cc, d = torch.sin(rot), torch.cos(rot) - torch.sin(rot) * torch.tan(sx)
    inv = torch.stack([torch.stack([d, -b], 1), torch.stack([-cc, a], 1)], 1)
    inv = inv / p.scale.view(-1, 1, 1)  # torchvision's inverse matrix (shear_y = 0), in pixels
    half = torch.tensor([width / 2, height / 2], dtype=torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = inv * half.view(1, 1, 2) / half.view(1, 2, 1)
    theta[:, :, 2] = -(inv @ p.translate.double().unsqueeze(2)).squeeze(2) / half
    theta[:, :, 0] *= (1.0 - 2.0 * p.flip.double()).view(-1, 1)
    # Pixel centres of the output, normalised: (2u + 1)/S − 1.
    bx = (2 * torch.arange(width, dtype=torch.float64) + 1) / width - 1
    by = (2 * torch.arange(height, dtype=torch.float64) + 1) / height - 1
    cols = (theta[:, :, :1] * bx + theta[:, :, 2:]).transpose(1, 2)  # [n, W, 2]
    rows = (theta[:, :, 1:2] * by).transpose(1, 2)  # [n, H, 2]
    cols, rows = (t.to(batch.device, batch.dtype) for t in (cols, rows))
    grid = cols[:, None, :, :] + rows[:, :, None, :]
    return F.grid_sample(batch, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _colour_(x: torch.Tensor, plan: Plan, block: Block) -> None:
    """ColorJitter, in place, in each image's op order, then grayscale, on one block.

    At each slot but the hue's, one scale-and-shift serves brightness (``f·x``) and contrast
    (``f·x + (1 − f)·mean luma``) rows, and is the identity for the rows saturated there; then
    the saturation runs on its rows.
    """
    first = block.start
    rows = slice(first, block.stop)
    for slot in range(len(plan.scale) if block.jitter else 0):
        if slot == block.hue_slot:
            photometric.hue_(x, plan.hue[rows])
            continue
        if block.scaled[slot]:
            f = plan.scale[slot, rows]
            shift = None
            if block.contrast[slot]:  # (1 − f)·mean luma = Σ_c (1 − f)·w_c·mean(x_c)
                means = x.mean(dim=(2, 3))
                shift = torch.linalg.vecdot(means, plan.contrast[slot, rows]).view(-1, 1, 1, 1)
            photometric.scale_shift_(x, f, shift)
        for start, stop in block.saturation[slot]:
            photometric.saturation_(x[start:stop], plan.saturation[first + start : first + stop])
    for start, stop in block.gray:  # slices in place: no gather and scatter back
        photometric.grayscale_(x[start:stop])


def _blur(x: torch.Tensor, plan: Plan, first: int) -> torch.Tensor:
    """Gaussian blur of block rows ``x [m, C, A, B]`` (sorted rows from ``first``): a pass along
    A, a transposition, a pass along B; returns ``[m, C, B, A]``, clamped to [0, 1]."""
    m, c, a, b = x.shape
    taps, index_a, index_b = plan.blur
    k = taps.shape[1]
    w = taps[first : first + m].view(m, 1, 1, k)
    offsets = plan.offsets[k]
    y = photometric.bag_rows(
        x.reshape(-1, b), index_a[: m * c * a * k], w.expand(m, c, a, k).reshape(-1),
        offsets[: m * c * a],
    )  # fmt: skip
    y = photometric.transposed(y.view(m, c, a, b)).view(-1, a)
    y = photometric.bag_rows(
        y, index_b[: m * c * b * k], w.expand(m, c, b, k).reshape(-1), offsets[: m * c * b]
    )
    return y.view(m, c, b, a).clamp_(0.0, 1.0)


def _resize(table: torch.Tensor, layout: Plan, block: Block, c: int, size: int) -> torch.Tensor:
    """A block's crops resized to ``size²`` from the batch's rows ``table [n·C·H, W]``: rows,
    a transposition, columns; returns the block transposed, ``[k, C, x, y]``."""
    k, first, stop = block.stop - block.start, block.start, block.stop
    y_taps, y_index, y_weight, x_taps, x_index, x_weight = layout.resize
    span = slice(first * c * size * y_taps, stop * c * size * y_taps)
    offsets = layout.offsets[y_taps][: k * c * size]
    x = photometric.bag_rows(table, y_index[span], y_weight[span], offsets)
    x = photometric.transposed(x.view(k, c, size, table.shape[1])).view(-1, size)
    span = slice(first * c * size * x_taps, stop * c * size * x_taps)
    offsets = layout.offsets[x_taps][: k * c * size]
    return photometric.bag_rows(x, x_index[span], x_weight[span], offsets).view(k, c, size, size)


def render(
    batch: torch.Tensor, p: ViewParams, crop_size: int | None, blur_kernel: int, blurs: bool
) -> torch.Tensor:
    """Views of a contiguous float batch ``[n, C, H, W]``: crop levels resize to ``crop_size``
    (else the affine warp keeps ``H × W``); ``blurs`` when the level blurs at all."""
    layout = plan(batch, p, crop_size, blur_kernel, blurs)
    n, c, height, width = batch.shape
    size = (crop_size, crop_size) if crop_size is not None else (height, width)
    out = torch.empty(n, c, *size, dtype=batch.dtype, device=batch.device)
    warped = affine_warp(batch, p) if crop_size is None else None
    for block in layout.blocks:
        dest = layout.order[block.start : block.stop]
        if warped is None:
            x, transposed = _resize(batch.view(-1, width), layout, block, c, size[0]), True
        else:
            x, transposed = warped.index_select(0, dest), False
        _colour_(x, layout, block)
        cut = block.blur_from
        if cut > 0:
            # Every jitter op clamps or (the hue) keeps its clamped input's range, and the
            # luma of [0, 1] pixels stays in it: only rows without jitter need the clamp.
            head = x[:cut] if block.jitter else x[:cut].clamp_(0.0, 1.0)
            out.index_copy_(0, dest[:cut], head.transpose(2, 3) if transposed else head)
        if cut < len(dest):
            y = _blur(x[cut:], layout, block.start + cut)
            out.index_copy_(0, dest[cut:], y if transposed else y.transpose(2, 3))
    return out
