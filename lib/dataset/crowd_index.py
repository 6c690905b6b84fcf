"""CrowdPose's crowd index of an image, from its COCO-format keypoint annotations.

For person ``i`` with ``N_a(i)`` labelled joints (``v > 0``) and ``N_b(i)`` labelled joints of the
other persons inside its box (edges included), the image's index is the mean of ``N_b(i) / N_a(i)``
over its persons with at least one labelled joint (Li et al., CrowdPose, CVPR 2019, eq. 1); 0 for an
image with none. It can exceed 1. CrowdPose's evaluator splits the test images by it into easy
(< 0.2), medium and hard (>= 0.8), and its json stores it per image as ``crowdIndex``, rounded to 2
decimals. ``iscrowd`` regions take no part.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Decimals of the stored crowdIndex, as in CrowdPose's json files.
CROWD_INDEX_DECIMALS = 2


def crowd_index(annotations: Sequence[dict]) -> float:
    """The crowd index of one image's annotations (dicts with ``keypoints`` (x, y, v) * K and ``bbox``)."""
    persons = []
    for ann in annotations:
        if ann.get("iscrowd") or not ann.get("keypoints"):
            continue
        kpts = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        persons.append((np.asarray(ann["bbox"], dtype=np.float64), kpts[kpts[:, 2] > 0, :2]))
    ratios = []
    for i, (box, own) in enumerate(persons):
        if not len(own):
            continue
        x0, y0, w, h = box
        others = [joints for j, (_, joints) in enumerate(persons) if j != i]
        joints = np.concatenate(others) if others else np.zeros((0, 2))
        inside = (joints[:, 0] >= x0) & (joints[:, 0] <= x0 + w) & (joints[:, 1] >= y0) & (joints[:, 1] <= y0 + h)
        ratios.append(np.count_nonzero(inside) / len(own))
    return float(np.mean(ratios)) if ratios else 0.0


def add_crowd_index(data: dict, overwrite: bool = False) -> int:
    """In place: give every image of the COCO dict ``data`` a ``crowdIndex`` (kept where present unless
    ``overwrite``), rounded as CrowdPose's; returns how many images got one."""
    by_image: dict[int, list[dict]] = {}
    for ann in data.get("annotations", []):
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    added = 0
    for image in data.get("images", []):
        if "crowdIndex" in image and not overwrite:
            continue
        image["crowdIndex"] = round(crowd_index(by_image.get(image["id"], [])), CROWD_INDEX_DECIMALS)
        added += 1
    return added
