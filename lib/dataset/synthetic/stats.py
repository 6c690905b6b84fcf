"""Statistics of a synthetic split, counted from its COCO json: what makes the set hard."""

from __future__ import annotations

import numpy as np

# COCO's "small" area limit (px²): persons below it are the low-resolution case.
SMALL_AREA = 32 * 32
# The crowd-index limits of CrowdPose's evaluator: easy below EASY, hard from HARD on.
EASY, HARD = 0.2, 0.8


def split_stats(data: dict) -> dict:
    """Statistics of a split's json dict: images, persons (labelled, non-crowd), persons per image,
    % small (area < ``SMALL_AREA``), % whose box overlaps another person's box in the same image,
    crowd regions; where the images carry ``crowdIndex``, its mean and the % of easy / medium / hard images."""
    by_image: dict[int, list[dict]] = {}
    crowds = 0
    for ann in data["annotations"]:
        if ann["iscrowd"]:
            crowds += 1
        elif ann["num_keypoints"] > 0:
            by_image.setdefault(ann["image_id"], []).append(ann)
    persons = sum(len(v) for v in by_image.values())
    small = sum(a["area"] < SMALL_AREA for v in by_image.values() for a in v)
    overlapping = 0
    for anns in by_image.values():
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)  # (P, 4) x, y, w, h
        x0, y0 = boxes[:, 0], boxes[:, 1]
        x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
        iw = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
        ih = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
        inter = iw * ih  # (P, P) pairwise intersection areas
        np.fill_diagonal(inter, 0)
        overlapping += int(np.count_nonzero(inter.max(axis=1, initial=0) > 0))
    n_img = len(data["images"])
    stats = {
        "images": n_img,
        "persons": persons,
        "persons_per_image": persons / max(n_img, 1),
        "pct_small": 100.0 * small / max(persons, 1),
        "pct_overlapping": 100.0 * overlapping / max(persons, 1),
        "crowd_regions": crowds,
    }
    indices = [image["crowdIndex"] for image in data["images"] if "crowdIndex" in image]
    if indices:  # CrowdPose's easy / medium / hard split of the images (crowd index < 0.2, < 0.8, >= 0.8)
        values = np.asarray(indices, dtype=np.float64)
        stats["mean_crowd_index"] = float(values.mean())
        for name, inside in (
            ("easy", values < EASY),
            ("medium", (values >= EASY) & (values < HARD)),
            ("hard", values >= HARD),
        ):
            stats[f"pct_{name}"] = 100.0 * np.count_nonzero(inside) / len(values)
    return stats


def format_stats(split: str, s: dict) -> str:
    """One line of :func:`split_stats` ``s`` for ``split``, as the generator prints it."""
    line = (
        f"{split}: {s['images']} images, {s['persons']} persons, {s['persons_per_image']:.2f} persons/image, "
        f"{s['pct_small']:.1f}% persons with area < 32^2, {s['pct_overlapping']:.1f}% persons overlapping another, "
        f"{s['crowd_regions']} crowd regions"
    )
    if "mean_crowd_index" in s:
        line += (
            f", crowd index {s['mean_crowd_index']:.2f} on average (images easy / medium / hard: "
            f"{s['pct_easy']:.0f} / {s['pct_medium']:.0f} / {s['pct_hard']:.0f} %)"
        )
    return line
