"""Multi-resolution heatmap loss and associative-embedding (AE) tag loss (HigherHRNet ``lib/core/loss.py``).

Values and normalisation are HigherHRNet's: per-image plain means for the heatmap loss (masked pixels
count in the denominator), AE push ``/(N (N-1)) * 0.5`` and pull ``/N`` over the N persons with at
least one labelled joint. The AE loss is vectorised over images, persons and joints (one gather,
segment means and a pairwise matrix) instead of the official Python loop over persons x joints; the
loop is kept in ``tests/core/test_loss.py`` as the reference it must equal in value and gradient.

``LOSS.HEATMAPS_LOSS_TYPE 'swahr'`` is SWAHR's loss (Luo et al., CVPR 2021; official code
greatlog/SWAHR-HumanPose, kept in :mod:`higherpose.bench.reference_swahr` as the reference): scale-adaptive
targets from the network's scale maps, the weight-adaptive term, and a scale loss per stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from higherpose.config.default import HEATMAPS_LOSS_TYPES
from higherpose.core.layout import OutputLayout


class HeatmapLoss(nn.Module):
    """Masked squared error, averaged per image over K x H x W (masked pixels still count in the mean).

    ``loss_type``: 'mse' (HigherHRNet) or 'wahr', the weight-adaptive heatmap regression of SWAHR
    (Luo et al., CVPR 2021): each squared error is weighted by ``|1 - p| * g**0.01 + |p| * (1 - g**0.01)``
    (p prediction, g target). Inside a Gaussian ``g**0.01`` is about 1, so the weight is ``|1 - p|``;
    on the background it is ``|p|``. The few foreground pixels then carry about as much of the loss as
    the many background ones, instead of a fraction of it under plain MSE.

    'qfl': the quality focal loss of GFL (Li et al., NeurIPS 2020) on heatmap *logits* (the model
    returns their sigmoid in eval mode): binary cross-entropy against the Gaussian target, weighted by
    ``|sigmoid(pred) - g|**2``. Cross-entropy's gradient does not vanish on the small Gaussian tails
    as MSE's does, and the focal weight mutes the many background pixels already near 0.

    'swahr': SWAHR's scale-adaptive heatmap regression with the 'wahr' weight. With the scale
    ``s`` (0 where g = 0) and ``L = ln g`` (0 where g = 0), the target is ``g + g L s + g L^2 s^2 / 2``,
    the second-order expansion of ``g**(1 + s)``: a Gaussian of standard deviation ``sigma / sqrt(1 + s)``,
    so the network widens (s < 0) or narrows (s > 0) each target to the person's scale. The weight is
    computed from the unscaled g.
    """

    def __init__(self, loss_type: str = "mse"):
        super().__init__()
        if loss_type not in HEATMAPS_LOSS_TYPES:
            raise ValueError(f"LOSS.HEATMAPS_LOSS_TYPE = {loss_type!r}: choose one of {HEATMAPS_LOSS_TYPES}")
        self.loss_type = loss_type

    def forward(
        self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """pred, gt: (B, K, H, W); mask: (B, H, W); scale ('swahr' only): (B, K, H, W), 0 where gt = 0
        -> (B,)."""
        if pred.shape != gt.shape:
            raise ValueError(f"heatmap prediction {tuple(pred.shape)} and target {tuple(gt.shape)} differ")
        if (scale is not None) != (self.loss_type == "swahr"):
            raise ValueError(f"LOSS.HEATMAPS_LOSS_TYPE = {self.loss_type!r}: scale maps are given to 'swahr' only")
        if self.loss_type == "qfl":
            weight = (torch.sigmoid(pred) - gt).pow(2)
            loss = F.binary_cross_entropy_with_logits(pred, gt, reduction="none") * weight
            loss = loss * mask[:, None, :, :].expand_as(pred)
            return loss.mean(dim=3).mean(dim=2).mean(dim=1)
        target = gt
        if scale is not None:
            log_gt = torch.log(torch.where(gt > 0, gt, torch.ones_like(gt)))
            target = gt + gt * log_gt * scale + 0.5 * gt * log_gt**2 * scale**2
        loss = (pred - target) ** 2
        if self.loss_type in ("wahr", "swahr"):
            soft = gt.pow(0.01)
            loss = loss * (torch.abs(1 - pred) * soft + torch.abs(pred) * (1 - soft))
        loss = loss * mask[:, None, :, :].expand_as(pred)
        return loss.mean(dim=3).mean(dim=2).mean(dim=1)


class ScaleLoss(nn.Module):
    """SWAHR's regulariser of the scale maps: ``s**2`` averaged per image over K x H x W, masked as the
    heatmap loss. It keeps s near 0 (the dataset's sigma) unless the heatmap loss pays for a change."""

    def forward(self, scale: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """scale: (B, K, H, W), 0 where the target is 0; mask: (B, H, W) -> (B,)."""
        loss = scale**2 * mask[:, None, :, :].expand_as(scale)
        return loss.mean(dim=3).mean(dim=2).mean(dim=1)


class AELoss(nn.Module):
    """Associative-embedding grouping loss (Newell et al.), one push and one pull value per image.

    ``loss_type``: 'exp' (push = exp(-d^2)) or 'max' (push = max(0, 1 - |d|)).
    """

    def __init__(self, loss_type: str):
        super().__init__()
        if loss_type not in ("exp", "max"):
            raise ValueError(f"LOSS.AE_LOSS_TYPE = {loss_type!r}: choose 'exp' or 'max'")
        self.loss_type = loss_type

    def forward(self, tags: torch.Tensor, joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tags: (B, K*H*W, 1) flattened tag maps; joints: (B, M, K, 2) int (flat index, visible).

        Returns ``(push (B,), pull (B,))``. Images with no labelled person give 0 and 0, with one
        person push 0 (as HigherHRNet, but on the tags' device).
        """
        b = tags.shape[0]
        flat = tags.reshape(b, -1)  # (B, N); HigherHRNet uses a 1-d tag per location
        joints = joints.to(device=tags.device, dtype=torch.long)
        index = joints[..., 0]  # (B, M, K)
        vis = (joints[..., 1] > 0).to(flat.dtype)  # (B, M, K)
        m, k = index.shape[1:]
        # Gather the tag of every (person, joint) slot; unused slots hold index 0 and are masked out.
        picked = torch.gather(flat, 1, index.reshape(b, m * k)).reshape(b, m, k)

        count = vis.sum(dim=2)  # (B, M) labelled joints per person
        person = count > 0
        denom = count.clamp(min=1)
        mean = (picked * vis).sum(dim=2) / denom  # (B, M) person tag = mean of its joints' tags
        pull_person = (((picked - mean[..., None]) ** 2) * vis).sum(dim=2) / denom
        num = person.sum(dim=1).to(flat.dtype)  # (B,) persons with at least one joint
        pull = torch.where(num > 0, (pull_person * person).sum(dim=1) / num.clamp(min=1), torch.zeros_like(num))

        diff = mean[:, :, None] - mean[:, None, :]  # (B, M, M)
        pair = (person[:, :, None] & person[:, None, :]).to(flat.dtype)
        if self.loss_type == "exp":
            push = (torch.exp(-(diff**2)) * pair).sum(dim=(1, 2)) - num
        else:
            push = (torch.clamp(1 - torch.abs(diff), min=0) * pair).sum(dim=(1, 2)) - num
        pairs = ((num - 1) * num).clamp(min=1)
        push = torch.where(num > 1, push / pairs * 0.5, torch.zeros_like(num))
        return push, pull


class MultiLossFactory(nn.Module):
    """Per-stage heatmap, push and pull losses, configured by ``cfg.LOSS`` (HigherHRNet semantics);
    with ``LOSS.HEATMAPS_LOSS_TYPE 'swahr'`` also a scale loss per stage with a heatmap loss, returned
    second (heatmaps, scale, push, pull), as the official SWAHR code does. The scale maps are the first K
    channels of each training-mode output (SWAHR's ``[scale | heatmaps | tags]``); no factor scales
    the scale loss, as in SWAHR.

    Which channels of stage ``i`` are heatmaps and which are tags comes from the
    :class:`~higherpose.core.layout.OutputLayout` built once here (``self.layout``).
    ``heatmaps_loss_factor``, ``push_loss_factor`` and ``pull_loss_factor`` are plain lists of floats:
    a trainer may rescale them (e.g. an AE warm-up) between steps.
    """

    def __init__(self, cfg: Any):
        super().__init__()
        loss = cfg.LOSS
        self.layout = OutputLayout.from_config(cfg)
        self.num_joints = self.layout.num_joints
        self.num_stages = self.layout.num_stages
        for key in ("HEATMAPS_LOSS_FACTOR", "PUSH_LOSS_FACTOR", "PULL_LOSS_FACTOR"):
            if len(loss[key]) != self.num_stages:
                raise ValueError(f"LOSS.{key} = {list(loss[key])}: needs LOSS.NUM_STAGES = {self.num_stages} entries")
        if self.layout.scale_maps and not all(stage.has_heatmaps for stage in self.layout.stages):
            raise ValueError(
                f"LOSS.HEATMAPS_LOSS_TYPE 'swahr' needs a heatmap loss on every stage: LOSS.WITH_HEATMAPS_LOSS = "
                f"{list(loss.WITH_HEATMAPS_LOSS)}"
            )
        self.heatmaps_loss = [
            HeatmapLoss(loss.HEATMAPS_LOSS_TYPE) if stage.has_heatmaps else None for stage in self.layout.stages
        ]
        self.scale_loss = [
            ScaleLoss() if stage.has_heatmaps and self.layout.scale_maps else None for stage in self.layout.stages
        ]
        self.ae_loss = [AELoss(loss.AE_LOSS_TYPE) if stage.has_tags else None for stage in self.layout.stages]
        self.heatmaps_loss_factor = [float(f) for f in loss.HEATMAPS_LOSS_FACTOR]
        self.push_loss_factor = [float(f) for f in loss.PUSH_LOSS_FACTOR]
        self.pull_loss_factor = [float(f) for f in loss.PULL_LOSS_FACTOR]

    def forward(
        self,
        outputs: Sequence[torch.Tensor],
        heatmaps: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        joints: Sequence[torch.Tensor],
    ) -> tuple[list[torch.Tensor | None], ...]:
        """outputs[i]: (B, C_i, R_i, R_i) (with 'swahr', (B, K + C_i, R_i, R_i)); heatmaps[i]: (B, K, R_i, R_i);
        masks[i]: (B, R_i, R_i); joints[i]: (B, M, K, 2). Returns three lists (heatmaps, push, pull), with
        'swahr' four (heatmaps, scale, push, pull), one entry per stage, of (B,) tensors or None."""
        for name, value in (("outputs", outputs), ("heatmaps", heatmaps), ("masks", masks), ("joints", joints)):
            if len(value) != self.num_stages:
                raise ValueError(f"{name} has {len(value)} entries, LOSS.NUM_STAGES = {self.num_stages}")
        heatmaps_losses: list[torch.Tensor | None] = []
        scale_losses: list[torch.Tensor | None] = []
        push_losses: list[torch.Tensor | None] = []
        pull_losses: list[torch.Tensor | None] = []
        for idx, (stage, output) in enumerate(zip(self.layout.stages, outputs)):
            heatmap_loss, ae_loss, scale_loss = self.heatmaps_loss[idx], self.ae_loss[idx], self.scale_loss[idx]
            scale, output = self.layout.split_scale(output)
            if heatmap_loss is not None:
                if scale is not None:
                    scale = scale * (heatmaps[idx] > 0).to(scale.dtype)  # SWAHR scales the Gaussians only
                hm = heatmap_loss(self.layout.heatmaps(output), heatmaps[idx], masks[idx], scale)
                heatmaps_losses.append(hm * self.heatmaps_loss_factor[idx])
            else:
                heatmaps_losses.append(None)
            scale_losses.append(scale_loss(scale, masks[idx]) if scale_loss is not None else None)
            if ae_loss is not None:
                tags = self.layout.tags(stage, output).reshape(output.shape[0], -1, 1)
                push, pull = ae_loss(tags, joints[idx])
                push_losses.append(push * self.push_loss_factor[idx])
                pull_losses.append(pull * self.pull_loss_factor[idx])
            else:
                push_losses.append(None)
                pull_losses.append(None)
        if self.layout.scale_maps:
            return heatmaps_losses, scale_losses, push_losses, pull_losses
        return heatmaps_losses, push_losses, pull_losses
