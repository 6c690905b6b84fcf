"""COCO annotations of a rendered synthetic image, read off its layer map.

The layer map ``ids`` (H, W) uint8 says who owns each pixel after drawing (``synthetic.draw``), so
a figure's segmentation is its visible region, and a joint is visible (``v=2``) where the figure
owns most of the pixels around it; an occluded joint is usually still labelled (``v=1``), as COCO's
annotators did, and otherwise left out (``v=0``), as are joints outside the image.
"""

from __future__ import annotations

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from higherpose.dataset.synthetic.figure import NUM_JOINTS

# COCO's person category id, the only category of the set.
PERSON_CATEGORY = 1
# COCO visibility flags: labelled and visible, labelled but occluded.
VISIBLE = 2
OCCLUDED = 1
# A joint is visible when at least this share of its (2 r + 1)² patch (r = 1: 3×3) is the figure's
# own pixels: one pixel alone would flip with the rounding of the joint and the drawn outline.
PATCH_RADIUS = 1
VISIBLE_SHARE = 0.5
# Chance that an occluded joint is labelled (v=1) rather than skipped (v=0): COCO's annotators
# labelled most occluded joints they could guess.
LABEL_OCCLUDED_PROB = 0.75
# Decimals kept for areas and boxes in the json, as COCO writes them.
DECIMALS = 2
# Fewest polygon vertices: fewer is no area, and pycocotools rejects such a polygon.
MIN_POLYGON_POINTS = 3


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a mask (H, W) bool as COCO polygons ``[x0, y0, x1, y1, ...]``."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for cnt in contours:
        if len(cnt) >= MIN_POLYGON_POINTS:
            polys.append([float(v) for v in cnt.reshape(-1)])
    return polys


def polygons_area(polys: list[list[float]], h: int, w: int) -> float:
    """Area in pixels of the union of ``polys`` as pycocotools rasterises them on an (h, w) image."""
    if not polys:
        return 0.0
    rles = mask_utils.frPyObjects(polys, h, w)
    return float(mask_utils.area(mask_utils.merge(rles)))


def crowd_annotation(crowd_ids: np.ndarray) -> dict | None:
    """The ``iscrowd=1`` annotation (no id fields) of a crowd mask (H, W) uint8, nonzero where a
    crowd figure was drawn; None when nothing of it was drawn."""
    h, w = crowd_ids.shape
    rle = mask_utils.encode(np.asfortranarray(crowd_ids))
    area = float(mask_utils.area(rle))
    if area <= 0:
        return None
    x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
    # Crowd segmentations are uncompressed RLE in COCO: run lengths down the columns, from a 0 run.
    flat = crowd_ids.reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] != 0:
        counts = [0] + counts
    return {
        "segmentation": {"counts": [int(c) for c in counts], "size": [h, w]},
        "num_keypoints": 0,
        "area": area,
        "iscrowd": 1,
        "keypoints": [0] * (NUM_JOINTS * 3),
        "bbox": [round(x, DECIMALS), round(y, DECIMALS), round(bw, DECIMALS), round(bh, DECIMALS)],
        "category_id": PERSON_CATEGORY,
    }


def person_annotation(rng: np.random.Generator, ids: np.ndarray, label: int, joints: np.ndarray) -> dict | None:
    """The annotation (no id fields) of figure ``label`` with joints (17, 2) float x, y, from the
    finished layer map ``ids`` (H, W); None when too little of it is visible for a polygon.

    ``rng`` decides which occluded joints are labelled.
    """
    h, w = ids.shape
    own = ids == label
    pts = np.round(joints).astype(np.int64)
    kpts = np.zeros((NUM_JOINTS, 3), np.int64)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    r = PATCH_RADIUS
    for k in np.flatnonzero(inside):
        x, y = pts[k]
        patch = own[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
        if np.mean(patch) >= VISIBLE_SHARE:
            kpts[k] = (x, y, VISIBLE)
        elif rng.random() < LABEL_OCCLUDED_PROB:
            kpts[k] = (x, y, OCCLUDED)
    polys = mask_polygons(own)
    area = polygons_area(polys, h, w)
    if area <= 0:
        return None
    # The box (inclusive pixel extent) holds the segmentation and every joint inside the image.
    xs, ys = pts[inside, 0], pts[inside, 1]
    seg = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polys])
    x0 = float(min(seg[:, 0].min(), xs.min() if len(xs) else np.inf))
    y0 = float(min(seg[:, 1].min(), ys.min() if len(ys) else np.inf))
    x1 = float(max(seg[:, 0].max(), xs.max() if len(xs) else -np.inf))
    y1 = float(max(seg[:, 1].max(), ys.max() if len(ys) else -np.inf))
    return {
        "segmentation": polys,
        "num_keypoints": int(np.count_nonzero(kpts[:, 2])),
        "area": round(area, DECIMALS),
        "iscrowd": 0,
        "keypoints": [int(v) for v in kpts.reshape(-1)],
        "bbox": [round(x0, DECIMALS), round(y0, DECIMALS), round(x1 - x0 + 1, DECIMALS), round(y1 - y0 + 1, DECIMALS)],
        "category_id": PERSON_CATEGORY,
    }
