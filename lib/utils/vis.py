"""Visualisation: poses drawn on images (demo, validation) and the grids of HigherHRNet's training
debug pictures.

Two families:

* :func:`draw_poses` / :func:`save_valid_image`: each person's skeleton (from the dataset's
  :class:`~higherpose.dataset.specs.KeypointSpec`, never a copy) in its own colour from a
  deterministic palette, joints as filled circles, optional joint confidences and person scores.
* :func:`make_heatmaps` / :func:`make_tagmaps` / :func:`save_batch_maps` / :func:`tile_images`:
  grids of input image ⊕ GT heatmaps / predicted heatmaps / min-max normalised tag maps (JET colour
  map). The official per-joint and per-image loops are replaced by whole-batch array operations (one
  ``applyColorMap`` per grid); the tests keep the plain loops as references. The training debug pictures, which
  read network outputs and group them into people, are assembled a floor above, in
  ``core/debug_images.py``.

Deliberate differences from HigherHRNet's ``lib/utils/vis.py``: person colours come from a fixed
palette instead of ``np.random`` (same person index → same colour in every frame and run); the input
tile shows the image un-normalised with the ImageNet mean/std (true colours, BGR on disk) instead of
a batch-wide min-max stretch written with R and B swapped; the grids are returned (for TensorBoard)
as well as written, atomically.
"""

from __future__ import annotations

import colorsys
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from higherpose.dataset.specs import COCO, CROWDPOSE, KeypointSpec
from higherpose.dataset.transforms import IMAGENET_MEAN, IMAGENET_STD
from higherpose.utils.atomic import atomic_write

_GOLDEN = 0.618033988749895


# --------------------------------------------------------------------------------------------------
# I/O
def imwrite_atomic(path: str | os.PathLike, image: np.ndarray, params: Sequence[int] = ()) -> None:
    """Encode ``image`` (BGR uint8) by the file extension and write it through a temporary file in
    the same folder + ``os.replace``, so a reader never sees a half-written picture."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1] or ".jpg"
    ok, buf = cv2.imencode(ext, image, list(params))
    if not ok:
        raise OSError(f"cv2 cannot encode an image as {ext!r} for {path}")
    atomic_write(path, lambda f: f.write(buf.tobytes()), binary=True)


# --------------------------------------------------------------------------------------------------
# poses
def person_color(index: int) -> tuple[int, int, int]:
    """BGR colour of person ``index``: hues stepped by the golden ratio, so neighbours in the list
    get well separated colours and the palette never runs out (deterministic, unlike HigherHRNet)."""
    hue = (index * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(round(b * 255)), int(round(g * 255)), int(round(r * 255))


def _put_label(image: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int]) -> None:
    """Text with a dark outline, readable on any background."""
    thick = max(1, int(round(scale * 2)))
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)


def draw_poses(
    image_bgr: np.ndarray,
    poses: Sequence[np.ndarray] | np.ndarray,
    spec: KeypointSpec,
    scores: Sequence[float] | None = None,
    threshold: float = 0.0,
    show_joint_scores: bool = False,
    thickness: int | None = None,
) -> np.ndarray:
    """Draw people on a copy of ``image_bgr``.

    Args:
        image_bgr: (H, W, 3) uint8 BGR image (a (H, W) grey image is converted); not modified.
        poses: P arrays (K, >=3) or one (P, K, >=3) array, in image pixels: ``x, y, confidence, ...``.
        spec: keypoint spec; its ``skeleton`` gives the limbs.
        scores: P person scores, written above each person; ``None`` writes none.
        threshold: a joint is drawn when its confidence is > ``threshold`` (HigherHRNet: ``> 0``);
            a limb when both ends are.
        show_joint_scores: also write each drawn joint's confidence next to it (small).
        thickness: limb thickness in pixels; default scales with the image size.

    Returns:
        (H, W, 3) uint8 BGR image; person ``p`` is drawn in :func:`person_color(p) <person_color>`.
    """
    image = np.asarray(image_bgr)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_poses: expected an (H, W, 3) BGR image, got shape {image.shape}")
    canvas = np.ascontiguousarray(image, dtype=np.uint8).copy()
    if scores is not None and len(scores) != len(poses):
        raise ValueError(f"draw_poses: {len(poses)} poses but {len(scores)} scores")
    h, w = canvas.shape[:2]
    t = thickness if thickness is not None else max(2, int(round(max(h, w) / 320)))
    radius = t + 1
    font = max(0.3, 0.18 * t)
    edges = np.asarray(spec.skeleton, dtype=np.int64).reshape(-1, 2)
    limit = 4 * max(h, w) + 16  # keep wild coordinates inside int32 for cv2

    for p, pose in enumerate(poses):
        pose = np.asarray(pose, dtype=np.float64)
        if pose.ndim != 2 or pose.shape[0] != spec.num_joints or pose.shape[1] < 3:
            raise ValueError(
                f"draw_poses: pose {p} has shape {pose.shape}; expected ({spec.num_joints}, >=3) for {spec.name}"
            )
        xy, conf = pose[:, :2], pose[:, 2]
        shown = np.isfinite(xy).all(axis=1) & np.isfinite(conf) & (conf > threshold)
        if not shown.any():
            continue
        pts = np.round(np.clip(np.nan_to_num(xy), -limit, limit)).astype(np.int32)
        color = person_color(p)

        limbs = edges[shown[edges[:, 0]] & shown[edges[:, 1]]] if len(edges) else edges
        if len(limbs):
            # one polylines call draws every limb of the person
            cv2.polylines(canvas, list(pts[limbs]), False, color, t, cv2.LINE_AA)
        for j in np.flatnonzero(shown):
            cv2.circle(canvas, (int(pts[j, 0]), int(pts[j, 1])), radius, color, -1, cv2.LINE_AA)
            if show_joint_scores:
                org = (int(pts[j, 0]) + radius + 1, int(pts[j, 1]) - radius - 1)
                _put_label(canvas, f"{conf[j]:.2f}", org, font * 0.8, (255, 255, 255))
        if scores is not None:
            top = int(np.argmin(np.where(shown, pts[:, 1], np.iinfo(np.int32).max)))
            org = (int(pts[shown, 0].min()), int(pts[top, 1]) - 3 * radius)
            _put_label(canvas, f"{float(scores[p]):.2f}", org, font * 1.2, color)
    return canvas


def save_valid_image(
    image: np.ndarray,
    joints: Sequence[np.ndarray],
    file_name: str | os.PathLike,
    dataset: str | KeypointSpec = "COCO",
) -> np.ndarray:
    """HigherHRNet's ``save_valid_image``: draw ``joints`` (P arrays (K, >=3), image pixels) on the RGB
    ``image`` and write it (BGR) to ``file_name``. ``dataset`` is 'COCO', 'CROWDPOSE' or a spec.
    Returns the drawn BGR image."""
    if isinstance(dataset, KeypointSpec):
        spec = dataset
    else:
        specs = {"COCO": COCO, "CROWDPOSE": CROWDPOSE, "CROWD_POSE": CROWDPOSE}
        if dataset.upper() not in specs:
            raise ValueError(f"save_valid_image: unknown dataset {dataset!r}; pass 'COCO', 'CROWDPOSE' or a spec")
        spec = specs[dataset.upper()]
    drawn = draw_poses(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR), joints, spec)
    imwrite_atomic(file_name, drawn)
    return drawn


# --------------------------------------------------------------------------------------------------
# debug grids
def as_float_cpu(x: Any) -> torch.Tensor:
    """Detached float32 CPU tensor (outputs may be fp16/bf16 under autocast, or on the GPU)."""
    return torch.as_tensor(x).detach().to("cpu", torch.float32)


def denormalize_images(batch_images: Any) -> np.ndarray:
    """(B, 3, S, S) ImageNet-normalised RGB tensor → (B, S, S, 3) uint8 BGR images."""
    x = as_float_cpu(batch_images)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    rgb = (x * std + mean).mul(255).clamp(0, 255).round().to(torch.uint8)
    return np.ascontiguousarray(rgb.permute(0, 2, 3, 1).numpy()[..., ::-1])


def _colorize(maps_u8: np.ndarray) -> np.ndarray:
    """(..., H, W) uint8 → (..., H, W, 3) JET colours with one ``applyColorMap`` call."""
    shape = maps_u8.shape
    flat = np.ascontiguousarray(maps_u8.reshape(-1, shape[-1]))
    return cv2.applyColorMap(flat, cv2.COLORMAP_JET).reshape(*shape, 3)


def _heatmaps_u8(heatmaps: torch.Tensor) -> np.ndarray:
    """HigherHRNet's ``heatmaps.mul(255).clamp(0, 255).byte()`` for any leading shape."""
    return heatmaps.mul(255).clamp(0, 255).to(torch.uint8).numpy()


def _tagmaps_u8(tagmaps: torch.Tensor) -> np.ndarray:
    """Each (H, W) map min-max stretched to 0..255 (HigherHRNet's arithmetic, vectorised): the
    denominator ``max - min + 1e-5`` is formed in float64 as the official Python floats are."""
    mn = tagmaps.amin(dim=(-2, -1), keepdim=True)
    mx = tagmaps.amax(dim=(-2, -1), keepdim=True)
    denom = (mx.double() - mn.double() + 1e-5).float()
    return (tagmaps - mn).div(denom).mul(255).clamp(0, 255).to(torch.uint8).numpy()


@functools.lru_cache(maxsize=4)
def _blend_table(alpha: float, beta: float) -> np.ndarray:
    """(256, 256) uint8 table of ``uint8(c * alpha + i * beta)`` computed in float64 exactly as the
    official per-map expression, so blending a whole batch is one lookup instead of float64 arrays."""
    values = np.arange(256, dtype=np.uint8)
    return (values[:, None] * alpha + values[None, :] * beta).astype(np.uint8)


def _fuse_grid(
    image: np.ndarray, colored: np.ndarray, alpha: float, beta: float, mask: np.ndarray | None = None
) -> np.ndarray:
    """``image`` (B, H, W, 3) and ``colored`` (B, K, H, W, 3) → grid (B*H, (K+1)*W, 3): per row the
    image (times ``mask`` (B, H, W) if given), then ``colored * alpha + image * beta`` per map (the
    unmasked image; truncated to uint8, as official; beta is passed, not ``1 - alpha``, whose
    rounding would change some pixels by one)."""
    b, k, h, w, _ = colored.shape
    fused = _blend_table(alpha, beta)[colored, image[:, None]]
    first = image if mask is None else image * mask[..., None]
    tiles = np.concatenate([first[:, None], fused], axis=1)  # (B, K+1, H, W, 3)
    return np.ascontiguousarray(tiles.transpose(0, 2, 1, 3, 4).reshape(b * h, (k + 1) * w, 3))


def _resize_batch(images: np.ndarray, height: int, width: int) -> np.ndarray:
    if images.shape[1:3] == (height, width):
        return images
    return np.stack([cv2.resize(im, (width, height)) for im in images])


def make_heatmaps(image: np.ndarray, heatmaps: Any) -> np.ndarray:
    """HigherHRNet's ``make_heatmaps``: ``image`` (h, w, 3) uint8, ``heatmaps`` (K, H, W) in 0..1 →
    (H, (K+1)*W, 3) uint8: the image resized to (H, W), then each map in JET blended 0.7 / 0.3."""
    maps = as_float_cpu(heatmaps)
    _, h, w = maps.shape
    img = _resize_batch(np.asarray(image)[None], h, w)
    return _fuse_grid(img, _colorize(_heatmaps_u8(maps))[None], 0.7, 0.3)


def make_tagmaps(image: np.ndarray, tagmaps: Any) -> np.ndarray:
    """HigherHRNet's ``make_tagmaps``: like :func:`make_heatmaps` with each tag map min-max
    normalised and blended 0.9 / 0.1."""
    maps = as_float_cpu(tagmaps)
    _, h, w = maps.shape
    img = _resize_batch(np.asarray(image)[None], h, w)
    return _fuse_grid(img, _colorize(_tagmaps_u8(maps))[None], 0.9, 0.1)


def save_batch_maps(
    batch_image: Any,
    batch_maps: Any,
    batch_mask: Any | None,
    file_name: str | os.PathLike | None,
    map_type: str = "heatmap",
    normalize: bool = True,
) -> np.ndarray:
    """HigherHRNet's ``save_batch_maps``, whole batch at once.

    Args:
        batch_image: (B, 3, S, S) images: ImageNet-normalised RGB tensor when ``normalize`` (undone
            here), else (B, S, S, 3) uint8 BGR.
        batch_maps: (B, K, H, W) heatmaps (0..1) or tag maps.
        batch_mask: (B, H, W) loss mask or None; multiplies the image tile (zero = ignored region).
        file_name: where to write the grid; None to only return it.
        map_type: 'heatmap' or 'tagmap'.

    Returns:
        (B*H, (K+1)*W, 3) uint8 BGR grid: one row per sample, image tile first.
    """
    if map_type not in ("heatmap", "tagmap"):
        raise ValueError(f"save_batch_maps: map_type must be 'heatmap' or 'tagmap', got {map_type!r}")
    maps = as_float_cpu(batch_maps)
    _, _, h, w = maps.shape
    images = denormalize_images(batch_image) if normalize else np.asarray(batch_image, dtype=np.uint8)
    images = _resize_batch(images, h, w)
    # official: mask.byte() multiplies the image tile only
    mask = None if batch_mask is None else as_float_cpu(batch_mask).to(torch.uint8).numpy()
    if mask is not None and mask.shape != (maps.shape[0], h, w):
        raise ValueError(f"save_batch_maps: mask shape {mask.shape} does not fit maps {tuple(maps.shape)}")
    if map_type == "heatmap":
        grid = _fuse_grid(images, _colorize(_heatmaps_u8(maps)), 0.7, 0.3, mask)
    else:
        grid = _fuse_grid(images, _colorize(_tagmaps_u8(maps)), 0.9, 0.1, mask)
    if file_name:
        imwrite_atomic(file_name, grid)
    return grid


def tile_images(images: np.ndarray, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """(B, H, W, 3) → one picture, ``nrow`` per row with ``padding`` black pixels (torchvision's
    ``make_grid`` layout, which HigherHRNet's ``save_batch_image_with_joints`` uses)."""
    b, h, w, c = images.shape
    cols = min(nrow, b)
    rows = -(-b // cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), dtype=np.uint8)
    for k in range(b):
        y, x = divmod(k, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[top : top + h, left : left + w] = images[k]
    return grid


def joints_to_poses(batch_joints: Any, output_res: int, num_joints: int) -> list[list[np.ndarray]]:
    """Decode the tag-loss joints (B, M, K, 2) — ``(k * R*R + y * R + x, visible)`` as written by
    ``JointsGenerator`` — into per-sample lists of (K, 3) poses ``(x, y, visible)`` at resolution R.
    Persons without any visible joint are dropped."""
    joints = torch.as_tensor(batch_joints).to("cpu").long().numpy()
    idx, vis = joints[..., 0], joints[..., 1]
    within = idx % (output_res * output_res)
    poses = np.stack([within % output_res, within // output_res, (vis > 0)], axis=-1).astype(np.float32)
    poses[..., :2] += 0.5  # joint pixel centre
    poses = poses[:, :, :num_joints]
    return [[p for p in sample if p[:, 2].any()] for sample in poses]


def add_debug_images(writer: Any, grids: Mapping[str, np.ndarray], step: int, tag: str = "debug") -> None:
    """Log :func:`save_debug_images`' grids to a TensorBoard ``SummaryWriter`` (RGB, HWC)."""
    for name, grid in grids.items():
        writer.add_image(f"{tag}/{name}", np.ascontiguousarray(grid[..., ::-1]), step, dataformats="HWC")
