"""higher_pose: HigherHRNet with the structure-aware transformer (SAT) head (``MODEL.NAME: higher_pose``).

The body and the heads are :class:`~higherpose.models.pose_higher_hrnet.PoseHigherResolutionNet`'s,
with the same module names, so ImageNet HRNet weights and HigherHRNet checkpoints load into the
shared part; every new parameter lives under ``sat_head.``. The SAT head
(:class:`~higherpose.models.sat_head.SATHead`) transforms the stage-4 1/4-resolution features before
HigherHRNet's heads and adds its dynamic heatmap term to the 1/4 heatmaps. Outputs are HigherHRNet's:
``[(B, K + K_tag, H/4, W/4), (B, K, H/2, W/2)]``; with ``LOSS.HEATMAPS_LOSS_TYPE 'swahr'`` SWAHR's scale
branches read the same features as the heads (the SAT head's output at 1/4) and, in training mode,
put K scale maps in front of each output.
"""

from __future__ import annotations

from typing import Any

import torch

from higherpose.models.pose_higher_hrnet import PoseHigherResolutionNet
from higherpose.models.sat_head import SATHead


class HigherPoseNet(PoseHigherResolutionNet):
    """HRNet body -> SAT head -> HigherHRNet heads. At initialisation it computes exactly HigherHRNet."""

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.sat_head = SATHead(**SATHead.from_config(cfg, in_channels=self.feature_channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features, dyn_heatmaps = self.sat_head(self.forward_features(x))
        return self.forward_heads(features, extra_heatmaps=dyn_heatmaps)

    def reset_parameters(self) -> None:
        """HigherHRNet's init for the body and heads (it also touches the SAT head's convs and BNs),
        then the SAT head's own init, which restores its zero gates and transformer init."""
        super().reset_parameters()
        self.sat_head.reset_parameters()


def get_pose_net(cfg: Any, is_train: bool, **kwargs: Any) -> HigherPoseNet:
    """Build higher_pose; for training with ``MODEL.INIT_WEIGHTS``, run :meth:`init_weights`
    (reset + ImageNet HRNet weights from ``MODEL.PRETRAINED``), as HigherHRNet does. The original
    HigherPose code skipped this call and so trained its backbone from scratch."""
    model = HigherPoseNet(cfg, **kwargs)
    if is_train and cfg.MODEL.INIT_WEIGHTS:
        model.init_weights(cfg.MODEL.PRETRAINED, verbose=cfg.VERBOSE)
    return model
