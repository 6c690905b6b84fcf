"""What the channels of each network output hold, read once from the config.

The network returns one tensor per resolution ("stage"), lowest resolution first. Stage ``i`` holds
K heatmaps when it has a heatmap loss (``LOSS.WITH_HEATMAPS_LOSS[i]``), followed by its tag maps when
it has an associative-embedding loss (``LOSS.WITH_AE_LOSS[i]``): K maps with ``MODEL.TAG_PER_JOINT``,
else one. The tags therefore start at channel K, or at 0 on a stage without heatmaps. At test time
the stages with ``TEST.WITH_HEATMAPS[i]`` feed the averaged heatmaps and those with ``TEST.WITH_AE[i]``
the tags; the mirrored pass permutes joint channels by the dataset's flip index; with
``DATASET.WITH_CENTER`` the last joint is the person centre, left out of grouping when
``TEST.IGNORE_CENTER``.

With ``LOSS.HEATMAPS_LOSS_TYPE 'swahr'`` a network in training mode puts K scale maps in front of every
stage's channels (SWAHR's ``[scale | heatmaps | tags]``); :meth:`OutputLayout.split_scale` takes them
off, and in eval mode the network returns the layout above without them.

:class:`OutputLayout` carries these facts as plain values, so the loss, the test-time stage
averaging and the UDP resampling decode an output the same way without reading the config per stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from higherpose.dataset.specs import spec_from_cfg
from higherpose.models.pose_higher_hrnet import has_scale_maps


@dataclass(frozen=True)
class StageLayout:
    """The channels of one stage's output (B, C_i, H_i, W_i).

    Attributes:
        has_heatmaps: channels ``[0, K)`` are heatmaps (``LOSS.WITH_HEATMAPS_LOSS[i]``).
        has_tags: channels ``[tag_start, C_i)`` are tag maps (``LOSS.WITH_AE_LOSS[i]``).
        test_heatmaps: the heatmaps enter the test-time average (also ``TEST.WITH_HEATMAPS[i]``).
        test_tags: the tag maps are used for grouping (also ``TEST.WITH_AE[i]``).
        tag_start: first tag channel: K after the heatmaps, 0 on a stage without them.
    """

    has_heatmaps: bool
    has_tags: bool
    test_heatmaps: bool
    test_tags: bool
    tag_start: int


@dataclass(frozen=True)
class OutputLayout:
    """The per-stage output layout of a pose network (see the module docstring).

    Attributes:
        num_joints: K, heatmap channels per stage (including the centre joint when present).
        stages: one :class:`StageLayout` per output, lowest resolution first.
        flip_index: K ints; joint ``j`` of the mirrored image is joint ``flip_index[j]`` of the image.
        tag_per_joint: K tag maps per tag stage (their channels flip with the joints), else one.
        with_center: the last joint is the person centre (``DATASET.WITH_CENTER``).
        ignore_center: the centre joint is dropped before grouping (``TEST.IGNORE_CENTER``).
        scale_maps: training-mode outputs start with K scale maps (``LOSS.HEATMAPS_LOSS_TYPE 'swahr'``).
    """

    num_joints: int
    stages: tuple[StageLayout, ...]
    flip_index: tuple[int, ...]
    tag_per_joint: bool
    with_center: bool
    ignore_center: bool
    scale_maps: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> OutputLayout:
        """Read ``LOSS.WITH_HEATMAPS_LOSS`` / ``WITH_AE_LOSS``, ``TEST.WITH_HEATMAPS`` / ``WITH_AE``
        (one entry per ``LOSS.NUM_STAGES``), ``MODEL.NUM_JOINTS``, ``MODEL.TAG_PER_JOINT``,
        ``DATASET.WITH_CENTER``, ``TEST.IGNORE_CENTER``, ``LOSS.HEATMAPS_LOSS_TYPE`` and the dataset's
        flip index."""
        num_stages = cfg.LOSS.NUM_STAGES
        flags = {
            "LOSS.WITH_HEATMAPS_LOSS": cfg.LOSS.WITH_HEATMAPS_LOSS,
            "LOSS.WITH_AE_LOSS": cfg.LOSS.WITH_AE_LOSS,
            "TEST.WITH_HEATMAPS": cfg.TEST.WITH_HEATMAPS,
            "TEST.WITH_AE": cfg.TEST.WITH_AE,
        }
        for key, value in flags.items():
            if len(value) != num_stages:
                raise ValueError(f"{key} = {list(value)}: needs LOSS.NUM_STAGES = {num_stages} entries")
        num_joints = int(cfg.MODEL.NUM_JOINTS)
        flip_index = tuple(int(j) for j in spec_from_cfg(cfg).flip_index)
        if len(flip_index) != num_joints:
            raise ValueError(
                f"MODEL.NUM_JOINTS = {num_joints} differs from the dataset's {len(flip_index)} joints "
                f"(DATASET.NUM_JOINTS = {cfg.DATASET.NUM_JOINTS})"
            )
        stages = tuple(
            StageLayout(
                has_heatmaps=bool(heatmaps),
                has_tags=bool(tags),
                test_heatmaps=bool(heatmaps and test_heatmaps),
                test_tags=bool(tags and test_tags),
                tag_start=num_joints if heatmaps else 0,
            )
            for heatmaps, tags, test_heatmaps, test_tags in zip(*flags.values())
        )
        return cls(
            num_joints=num_joints,
            stages=stages,
            flip_index=flip_index,
            tag_per_joint=bool(cfg.MODEL.TAG_PER_JOINT),
            with_center=bool(cfg.DATASET.WITH_CENTER),
            ignore_center=bool(cfg.TEST.IGNORE_CENTER),
            scale_maps=has_scale_maps(cfg),
        )

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def drop_center(self) -> bool:
        """The last joint's maps are removed before grouping."""
        return self.with_center and self.ignore_center

    def stage(self, i: int) -> StageLayout:
        """Layout of output ``i``; an error naming the config when the model returns more outputs."""
        if not 0 <= i < len(self.stages):
            raise ValueError(f"output {i} has no layout: LOSS.NUM_STAGES = {len(self.stages)}")
        return self.stages[i]

    def split_scale(self, output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """A training-mode stage output -> ``(scale maps (B, K, H, W) or None, the rest (B, C_i, H, W))``;
        the rest is decoded by :meth:`heatmaps` and :meth:`tags`. Without ``scale_maps``: ``(None, output)``."""
        if not self.scale_maps:
            return None, output
        if output.shape[1] < 2 * self.num_joints:
            raise ValueError(
                f"a stage output of {output.shape[1]} channels has no room for {self.num_joints} scale maps and "
                f"{self.num_joints} heatmaps (LOSS.HEATMAPS_LOSS_TYPE 'swahr'; the network adds the scale maps in "
                "training mode only)"
            )
        return output[:, : self.num_joints], output[:, self.num_joints :]

    def heatmaps(self, output: torch.Tensor, flipped: bool = False) -> torch.Tensor:
        """The heatmaps (B, K, H, W) of a stage output (B, C, H, W) with ``has_heatmaps``. ``flipped``:
        the output of the mirrored image, already flipped back along W; joints are renumbered here."""
        maps = output[:, : self.num_joints]
        return maps[:, list(self.flip_index)] if flipped else maps

    def tags(self, stage: StageLayout, output: torch.Tensor, flipped: bool = False) -> torch.Tensor:
        """The tag maps (B, K or 1, H, W) of a stage output (B, C, H, W); ``flipped`` as in
        :meth:`heatmaps` (a single shared tag map needs no renumbering)."""
        maps = output[:, stage.tag_start :]
        return maps[:, list(self.flip_index)] if flipped and self.tag_per_joint else maps

    def test_maps(
        self, aligned: Iterable[torch.Tensor], flipped: bool = False
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Average the test heatmaps over the stages and collect the test tag maps of one pass.

        ``aligned``: the stage outputs in stage order, each (B, C_i, H, W) on one common grid (and
        flipped back along W for the mirrored pass, ``flipped``). Returns the stage-averaged heatmaps
        (B, K, H, W) (None when no stage feeds them) and the tag maps [(B, K or 1, H, W)] in stage order.
        """
        heat_sum: torch.Tensor | None = None
        count = 0
        tags: list[torch.Tensor] = []
        for i, output in enumerate(aligned):
            stage = self.stage(i)
            if stage.test_heatmaps:
                maps = self.heatmaps(output, flipped)
                heat_sum = maps if heat_sum is None else heat_sum + maps
                count += 1
            if stage.test_tags:
                tags.append(self.tags(stage, output, flipped))
        return (heat_sum / count if count else None), tags

    def without_center(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Maps [(B, K, H, W)] without the centre joint's channel when ``drop_center``, else unchanged."""
        if self.drop_center:
            return [m[:, :-1] for m in maps]
        return list(maps)
