"""SWAHR's official code (greatlog/SWAHR-HumanPose), the reference for ``LOSS.HEATMAPS_LOSS_TYPE 'swahr'``.

Kept as the official code writes it, with the deviations each docstring names (plain arguments instead
of ``cfg``, the AE loop of :mod:`higherpose.bench.reference` instead of a copy of HigherHRNet's).
Training and inference never run it: the tests hold :mod:`higherpose.core.loss`, the scale branches of
:mod:`higherpose.models.pose_higher_hrnet` and the ``warmup_linear`` schedule of
:mod:`higherpose.utils.optim` to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from higherpose.bench.reference import loop_ae_loss

# ------------------------------------------------------------------ loss (SWAHR lib/core/loss.py)


class SwahrHeatmapLoss(nn.Module):
    """SWAHR's ``HeatmapLoss``, verbatim. pred, gt, scale: (B, K, H, W); mask: (B, H, W) -> (B,)."""

    def forward(self, pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        assert pred.size() == gt.size()

        dis = gt.clone()
        dis = torch.where(torch.gt(gt, 0), gt, gt + 1)
        dis = torch.log(dis)

        scaled_gt = gt + gt * dis * scale + 0.5 * gt * dis**2 * scale**2
        weight = torch.abs(1 - pred) * gt**0.01 + torch.abs(pred) * (1 - gt**0.01)

        loss = (pred - scaled_gt) ** 2 * weight * mask[:, None].expand_as(gt)
        loss = loss.mean(dim=3).mean(dim=2).mean(dim=1)

        return loss


class SwahrScaleLoss(nn.Module):
    """SWAHR's ``ScaleLoss``, verbatim. mask: (B, H, W); scale: (B, K, H, W) -> (B,)."""

    def forward(self, mask: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        loss = scale**2 * mask[:, None, :, :].expand_as(scale)
        loss = loss.mean(dim=3).mean(dim=2).mean(dim=1)
        return loss


def swahr_multi_loss(
    outputs: Sequence[torch.Tensor],
    heatmaps: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    joints: Sequence[torch.Tensor],
    num_joints: int,
    with_heatmaps_loss: Sequence[bool],
    with_ae_loss: Sequence[bool],
    heatmaps_loss_factor: Sequence[float],
    push_loss_factor: Sequence[float],
    pull_loss_factor: Sequence[float],
    ae_loss_type: str,
) -> tuple[list, list, list, list]:
    """SWAHR's ``MultiLossFactory.forward``, its loop verbatim, the ``cfg.LOSS`` values as arguments.

    outputs[i]: (B, K + C_i, R, R) ``[scale | heatmaps | tags]``; returns the four per-stage lists
    (heatmaps, scale, push, pull) of (B,) tensors or None."""
    heatmaps_losses = []
    scale_losses = []
    push_losses = []
    pull_losses = []
    for idx in range(len(outputs)):
        offset_feat = 0
        if with_heatmaps_loss[idx]:
            scale_pred = outputs[idx][:, :num_joints] * (heatmaps[idx] > 0).float()

            scale_loss = SwahrScaleLoss()(masks[idx], scale_pred)
            scale_losses.append(scale_loss)

            heatmaps_pred = outputs[idx][:, num_joints : num_joints * 2]

            heatmaps_loss = SwahrHeatmapLoss()(heatmaps_pred, heatmaps[idx], masks[idx], scale_pred)
            heatmaps_loss = heatmaps_loss * heatmaps_loss_factor[idx]
            heatmaps_losses.append(heatmaps_loss)

            offset_feat = num_joints * 2
        else:
            heatmaps_losses.append(None)
            scale_losses.append(None)

        if with_ae_loss[idx]:
            tags_pred = outputs[idx][:, offset_feat:]
            batch_size = tags_pred.size()[0]
            tags_pred = tags_pred.contiguous().view(batch_size, -1, 1)

            push_loss, pull_loss = loop_ae_loss(tags_pred, joints[idx], ae_loss_type)
            push_loss = push_loss * push_loss_factor[idx]
            pull_loss = pull_loss * pull_loss_factor[idx]

            push_losses.append(push_loss)
            pull_losses.append(pull_loss)
        else:
            push_losses.append(None)
            pull_losses.append(None)

    return heatmaps_losses, scale_losses, push_losses, pull_losses


def swahr_total_loss(heatmaps_losses: list, scale_losses: list, push_losses: list, pull_losses: list) -> torch.Tensor:
    """SWAHR's ``do_train`` sum: per stage with a heatmap loss, heatmap + scale + push + pull batch means."""
    loss = 0
    for idx in range(len(heatmaps_losses)):
        if heatmaps_losses[idx] is not None:
            loss = loss + heatmaps_losses[idx].mean(dim=0) + scale_losses[idx].mean(dim=0)
            if push_losses[idx] is not None:
                loss = loss + push_losses[idx].mean(dim=0)
            if pull_losses[idx] is not None:
                loss = loss + pull_losses[idx].mean(dim=0)
    return loss


# ------------------------------------------------------------------ model (SWAHR lib/models/pose_higher_hrnet.py)


def make_conv_scale_layers(input_channels: int, deconv_channels: Sequence[int], num_joints: int) -> nn.ModuleList:
    """SWAHR's ``_make_conv_scale_layers`` with ``extra.STAGE4.NUM_CHANNELS[0]`` (``input_channels``),
    ``extra.DECONV.NUM_CHANNELS`` and ``cfg.MODEL.NUM_JOINTS`` as arguments; the zero init of the last
    conv is ``init_weights``'s."""
    conv_scale_layers = []
    conv_scale_layers.append(
        nn.Sequential(
            nn.Conv2d(input_channels, num_joints, 1, 1, 0),
            nn.BatchNorm2d(num_joints),
            nn.ReLU(True),
            nn.Conv2d(num_joints, num_joints, 9, 1, 4, groups=num_joints),
        )
    )
    for channels in deconv_channels:
        conv_scale_layers.append(
            nn.Sequential(
                nn.Conv2d(channels, num_joints, 1, 1, 0),
                nn.BatchNorm2d(num_joints),
                nn.ReLU(True),
                nn.Conv2d(num_joints, num_joints, 9, 1, 4, groups=num_joints),
            )
        )
    for layer in conv_scale_layers:
        nn.init.constant_(layer[-1].weight, 0)
        nn.init.constant_(layer[-1].bias, 0)
    return nn.ModuleList(conv_scale_layers)


def swahr_heads_forward(
    x: torch.Tensor,
    final_layers: nn.ModuleList,
    deconv_layers: nn.ModuleList,
    conv_scale_layers: nn.ModuleList,
    cat_output: Sequence[bool],
    num_joints: int,
) -> tuple[torch.Tensor, ...]:
    """The heads of SWAHR's ``forward`` after stage 4, verbatim: x (B, C, H/4, W/4) the stage-4
    features -> one ``[scale | heatmaps | tags]`` tensor per stage."""
    final_outputs = []
    y = final_layers[0](x)

    scale = conv_scale_layers[0](x)
    y = torch.cat([scale, y], 1)
    final_outputs.append(y)

    for i in range(len(deconv_layers)):
        if cat_output[i]:
            x = torch.cat((x, y[:, num_joints:]), 1)

        x = deconv_layers[i](x)
        scale = conv_scale_layers[i + 1](x)

        y = final_layers[i + 1](x)
        y = torch.cat([scale, y], 1)

        final_outputs.append(y)

    return tuple(final_outputs)


# ------------------------------------------------------------------ schedule (SWAHR lib/core/trainer.py)


def swahr_lr(
    lr: float, world_size: int, warm_up_epoch: int, end_epoch: int, iters_per_epoch: int, current_iters: int
) -> float:
    """The LR SWAHR's ``do_train`` sets after the optimiser step ``current_iters`` (so its step
    ``current_iters + 1`` uses it); ``lr`` and ``world_size`` are ``cfg.TRAIN.LR`` and ``cfg.WORLD_SIZE``."""
    warm_up_iters = warm_up_epoch * iters_per_epoch
    train_iters = (end_epoch - warm_up_epoch) * iters_per_epoch
    initial_lr = lr * world_size
    if current_iters < warm_up_iters:
        lr = initial_lr * 0.1 + current_iters / warm_up_iters * initial_lr * 0.9
    else:
        lr = (1 - (current_iters - warm_up_iters) / train_iters) * initial_lr
    return lr
