"""HigherHRNet's training debug pictures (``DEBUG.*`` keys): ground-truth and predicted heatmaps, tag
maps, and poses drawn on the input, per output resolution.

The pictures themselves are drawn by :mod:`higherpose.utils.vis`; this module adds what needs the
network's output conventions: the split of an output into heatmaps and tags and the grouping of the
predicted maps into people (:class:`~higherpose.core.group.HeatmapParser`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from higherpose.core.group import HeatmapParser
from higherpose.dataset.specs import spec_from_cfg
from higherpose.utils.vis import (
    as_float_cpu,
    denormalize_images,
    draw_poses,
    imwrite_atomic,
    joints_to_poses,
    save_batch_maps,
    tile_images,
)


def _group_poses(cfg: Any, heatmaps: torch.Tensor, tags: torch.Tensor) -> list[tuple[list[np.ndarray], list[float]]]:
    """Group each sample's heatmaps (B, K, R, R) by its tag maps (B, K or 1, R, R) with
    ``HeatmapParser`` (adjust, no refine: fast); poses in map pixels."""
    parser = HeatmapParser(cfg)
    out = []
    for i in range(heatmaps.shape[0]):
        grouped, scores = parser.parse(heatmaps[i : i + 1], tags[i : i + 1].unsqueeze(-1), True, False)
        people = grouped[0] if len(grouped) else []
        out.append(([np.asarray(p) for p in people], [float(s) for s in scores]))
    return out


def save_debug_images(
    cfg: Any,
    batch_images: Any,
    batch_heatmaps: Any | None,
    batch_masks: Any | None,
    batch_outputs: Any,
    prefix: str | os.PathLike | None,
    batch_joints: Any | None = None,
    batch_scale: Any | None = None,
) -> dict[str, np.ndarray]:
    """Training debug pictures of one output resolution (HigherHRNet's ``save_debug_images``).

    Args:
        cfg: config; ``DEBUG.DEBUG`` off → nothing. ``SAVE_HEATMAPS_GT`` → ``{prefix}_hm_gt.jpg``,
            ``SAVE_HEATMAPS_PRED`` → ``_hm_pred.jpg``, ``SAVE_TAGMAPS_PRED`` → ``_tag_pred.jpg`` (when the
            output has tag channels), ``SAVE_BATCH_IMAGES_GT`` → ``_gt.jpg`` (GT joints drawn, needs
            ``batch_joints``), ``SAVE_BATCH_IMAGES_PRED`` → ``_pred.jpg`` (poses grouped from the
            predicted heatmaps + tags by ``HeatmapParser``, when the output has tags),
            ``SAVE_SCALEMAPS_PRED`` → ``_scale_pred.jpg`` (when ``batch_scale`` is given).
        batch_images: (B, 3, S, S) ImageNet-normalised RGB input.
        batch_heatmaps: (B, K, R, R) GT heatmaps or None.
        batch_masks: (B, R, R) loss masks or None.
        batch_outputs: (B, K [+ K tags], R, R) network output of this resolution, without scale maps.
        prefix: path prefix of the files (e.g. ``output/.../train_100_output_128``); None = write
            nothing, only return the grids.
        batch_joints: (B, M, K, 2) tag-loss joints of this resolution (for ``_gt.jpg``).
        batch_scale: (B, K, R, R) SWAHR's scale maps of this resolution (signed; drawn min-max
            normalised, as the tag maps) or None.

    Returns:
        ``{'hm_gt' | 'hm_pred' | 'tag_pred' | 'scale_pred' | 'gt' | 'pred': (H, W, 3) uint8 BGR grid}`` for what was
        made; log to TensorBoard with :func:`~higherpose.utils.vis.add_debug_images`.
    """
    grids: dict[str, np.ndarray] = {}
    dbg = cfg.DEBUG
    if not dbg.DEBUG:
        return grids
    k = cfg.DATASET.NUM_JOINTS
    outputs = as_float_cpu(batch_outputs)
    pred_heatmaps, pred_tags = outputs[:, :k], outputs[:, k:]
    images = denormalize_images(batch_images)  # (B, S, S, 3) BGR
    scale = images.shape[2] / outputs.shape[-1]  # map pixels -> input pixels

    if dbg.SAVE_HEATMAPS_GT and batch_heatmaps is not None:
        grids["hm_gt"] = save_batch_maps(images, batch_heatmaps, batch_masks, None, "heatmap", normalize=False)
    if dbg.SAVE_HEATMAPS_PRED:
        grids["hm_pred"] = save_batch_maps(images, pred_heatmaps, batch_masks, None, "heatmap", normalize=False)
    if dbg.SAVE_TAGMAPS_PRED and pred_tags.shape[1]:
        grids["tag_pred"] = save_batch_maps(images, pred_tags, batch_masks, None, "tagmap", normalize=False)

    if dbg.get("SAVE_SCALEMAPS_PRED", False) and batch_scale is not None:
        grids["scale_pred"] = save_batch_maps(images, batch_scale, batch_masks, None, "tagmap", normalize=False)

    if dbg.SAVE_BATCH_IMAGES_GT and batch_joints is not None:
        spec = spec_from_cfg(cfg)
        drawn = []
        for image, people in zip(images, joints_to_poses(batch_joints, outputs.shape[-1], k)):
            people = [np.concatenate([p[:, :2] * scale, p[:, 2:]], axis=1) for p in people]
            drawn.append(draw_poses(image, people, spec))
        grids["gt"] = tile_images(np.stack(drawn))
    # Grouping needs tag maps; the higher-resolution outputs carry heatmaps only.
    if dbg.SAVE_BATCH_IMAGES_PRED and pred_tags.shape[1]:
        spec = spec_from_cfg(cfg)
        drawn = []
        for image, (people, scores) in zip(images, _group_poses(cfg, pred_heatmaps, pred_tags)):
            people = [np.concatenate([p[:, :2] * scale, p[:, 2:3]], axis=1) for p in people]
            drawn.append(draw_poses(image, people, spec, scores=scores))
        grids["pred"] = tile_images(np.stack(drawn))

    if prefix:
        for name, grid in grids.items():
            imwrite_atomic(f"{os.fspath(prefix)}_{name}.jpg", grid)
    return grids
