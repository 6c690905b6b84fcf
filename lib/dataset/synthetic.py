"""A synthetic COCO-format multi-person keypoint set that a tiny model can learn on a CPU.

Each image holds several articulated figures on the COCO 17-joint skeleton (``specs.COCO``): filled
limbs of varying thickness, a torso polygon, a head ellipse with eyes / nose / ears drawn as small
distinct marks at the keypoints, hands and feet at the limb ends. Poses vary (joint angles within
human-like limits), so do scale (many small people: the low-resolution case), overlap and
occlusion (by other figures and by occluder shapes), and backgrounds are textured and noisy. Some
images hold a crowd region (a cluster of tiny unlabelled figures, ``iscrowd=1`` with an RLE).

Annotations follow COCO: ``v=2`` visible, ``v=1`` labelled but occluded, ``v=0`` unlabelled (outside
the image, or an occluded joint the "annotator" skipped); ``area`` is the segmentation area
(visible region of the figure, pycocotools); figures are front-facing, so a person's left side is
on the image's right, as for a person facing the camera in COCO.

Everything is a function of ``(seed, split, image index)``: the same seed writes the same json bytes
and the same images, whatever the number of processes. The json files are written last (atomically),
after a ``.incomplete`` marker, so an interrupted run never looks complete.
"""

from __future__ import annotations

import fcntl
import json
import math
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from .specs import COCO

SPLIT_CODES = {"train": 1, "val": 2}
_MARKER = ".incomplete"
_SKIN = np.array(
    [(197, 140, 133), (236, 188, 180), (209, 163, 164), (161, 102, 94), (80, 51, 53), (89, 47, 42), (224, 172, 105)],
    dtype=np.float64,
)  # RGB


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator (defaults: the quick-start set)."""

    min_size: int = 256  # image sides are drawn in [min_size, max_size], multiples of 32
    max_size: int = 320
    people_weights: tuple[float, ...] = (0.06, 0.2, 0.3, 0.24, 0.13, 0.07)  # P(1..6 labelled figures)
    small_fraction: float = 0.3  # share of figures drawn small; with the rest ~35 % of persons have area < 32²
    crowd_prob: float = 0.15  # images with a crowd region
    occluder_prob: float = 0.5  # images with occluder shapes
    near_prob: float = 0.4  # a figure placed next to another one (overlap)
    jpeg_quality: int = 92


# -- figure geometry ----------------------------------------------------------------------------------


def _unit(angle: np.ndarray | float) -> np.ndarray:
    """Direction at ``angle`` radians measured from 'down' (+y), positive toward +x."""
    return np.array([np.sin(angle), np.cos(angle)])


def figure_joints(rng: np.random.Generator, height: float, pelvis: np.ndarray) -> tuple[np.ndarray, float]:
    """(17, 2) float joint positions of a front-facing figure of ``height`` px, and its head radius.

    Person-left joints (odd COCO indices after the face) lie on the image's right (+x).
    """
    h = height
    tilt = rng.uniform(-0.25, 0.25)  # whole-body lean (rad)
    up = -_unit(tilt)  # pelvis → neck
    right = np.array([np.cos(tilt), -np.sin(tilt)])  # image-right, perpendicular to the body axis
    torso = h * rng.uniform(0.28, 0.32)
    neck = pelvis + up * torso
    sho_w = h * rng.uniform(0.09, 0.12)
    hip_w = h * rng.uniform(0.06, 0.08)
    # COCO left = person's left = image right for a figure facing the camera.
    l_sho, r_sho = neck + right * sho_w, neck - right * sho_w
    l_hip, r_hip = pelvis + right * hip_w, pelvis - right * hip_w
    head_r = h * rng.uniform(0.075, 0.085)
    head_c = neck + up * (head_r * 1.35) + right * h * rng.uniform(-0.015, 0.015)
    joints = np.zeros((17, 2))
    joints[0] = head_c - up * head_r * 0.25  # nose
    joints[1] = head_c + right * head_r * 0.42 + up * head_r * 0.18  # left eye (image right)
    joints[2] = head_c - right * head_r * 0.42 + up * head_r * 0.18
    joints[3] = head_c + right * head_r * 0.98 + up * head_r * 0.05  # left ear
    joints[4] = head_c - right * head_r * 0.98 + up * head_r * 0.05
    joints[5], joints[6] = l_sho, r_sho
    joints[11], joints[12] = l_hip, r_hip
    upper, fore = h * rng.uniform(0.15, 0.18), h * rng.uniform(0.13, 0.16)
    thigh, shank = h * rng.uniform(0.22, 0.25), h * rng.uniform(0.21, 0.24)
    for side, sho, elb, wri in ((1, 5, 7, 9), (-1, 6, 8, 10)):
        a1 = tilt + side * rng.uniform(-0.2, 2.4)  # upper arm: from along the body to raised
        a2 = a1 + side * rng.uniform(-0.3, 2.2)  # elbow bend
        joints[elb] = joints[sho] + _unit(a1) * upper
        joints[wri] = joints[elb] + _unit(a2) * fore
    for side, hip, kne, ank in ((1, 11, 13, 15), (-1, 12, 14, 16)):
        a1 = tilt + side * rng.uniform(-0.15, 0.7)
        a2 = a1 + side * rng.uniform(-0.6, 0.4)
        joints[kne] = joints[hip] + _unit(a1) * thigh
        joints[ank] = joints[kne] + _unit(a2) * shank
    return joints, head_r


def _colour(rng: np.random.Generator, dark: bool = False) -> tuple[int, int, int]:
    value = rng.integers(40, 120) if dark else rng.integers(110, 240)
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(70, 230), value]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def draw_figure(
    canvas: np.ndarray, ids: np.ndarray | None, label: int, joints: np.ndarray, head_r: float, height: float, rng
) -> None:
    """Draw one figure onto ``canvas`` (H, W, 3) RGB; paint ``label`` into ``ids`` (H, W) where drawn."""
    skin = tuple(int(c) for c in _SKIN[rng.integers(len(_SKIN))])
    shirt, pants, shoes = _colour(rng), _colour(rng, dark=True), _colour(rng, dark=True)
    limb = max(2, int(round(height * rng.uniform(0.045, 0.06))))
    leg = max(2, int(round(height * rng.uniform(0.055, 0.075))))
    j = joints

    def line(a, b, colour, thick):
        cv2.line(canvas, _pt(j[a]), _pt(j[b]), colour, thick, cv2.LINE_AA)
        if ids is not None:
            cv2.line(ids, _pt(j[a]), _pt(j[b]), label, thick)

    def disc(p, r, colour):
        cv2.circle(canvas, _pt(p), max(1, int(round(r))), colour, -1, cv2.LINE_AA)
        if ids is not None:
            cv2.circle(ids, _pt(p), max(1, int(round(r))), label, -1)

    for hip, kne, ank in ((11, 13, 15), (12, 14, 16)):  # legs behind the torso
        line(hip, kne, pants, leg)
        line(kne, ank, pants, max(2, leg - 1))
        disc(j[ank], leg * 0.75, shoes)
    quad = np.array([_pt(j[5]), _pt(j[6]), _pt(j[12]), _pt(j[11])], np.int32)
    cv2.fillConvexPoly(canvas, quad, shirt, cv2.LINE_AA)
    if ids is not None:
        cv2.fillConvexPoly(ids, quad, label)
    neck = (j[5] + j[6]) / 2
    cv2.line(canvas, _pt(neck), _pt(j[0]), skin, max(2, limb), cv2.LINE_AA)
    for sho, elb, wri in ((5, 7, 9), (6, 8, 10)):
        line(sho, elb, shirt, limb)
        line(elb, wri, skin, max(2, limb - 1))
        disc(j[elb], limb * 0.55, tuple(int(c * 0.8) for c in shirt))  # elbow mark
        disc(j[wri], limb * 0.7, skin)  # hand
    for kne in (13, 14):
        disc(j[kne], leg * 0.55, tuple(int(c * 0.75) for c in pants))  # knee mark
    head_c = (j[3] + j[4]) / 2 + (j[0] - (j[1] + j[2]) / 2) * 0.1
    axes = (max(1, int(round(head_r))), max(1, int(round(head_r * 1.18))))
    angle = math.degrees(math.atan2(j[3][1] - j[4][1], j[3][0] - j[4][0]))
    cv2.ellipse(canvas, _pt(head_c), axes, angle, 0, 360, skin, -1, cv2.LINE_AA)
    if ids is not None:
        cv2.ellipse(ids, _pt(head_c), axes, angle, 0, 360, label, -1)
    mark = max(1, int(round(head_r * 0.16)))
    dark_skin = tuple(int(c * 0.6) for c in skin)
    for ear in (3, 4):
        cv2.circle(canvas, _pt(j[ear]), max(1, int(round(head_r * 0.22))), dark_skin, -1, cv2.LINE_AA)
        if ids is not None:
            cv2.circle(ids, _pt(j[ear]), max(1, int(round(head_r * 0.22))), label, -1)
    for eye in (1, 2):
        cv2.circle(canvas, _pt(j[eye]), mark, (20, 20, 30), -1, cv2.LINE_AA)
    cv2.circle(canvas, _pt(j[0]), mark, (200, 40, 40), -1, cv2.LINE_AA)  # nose: a red dot


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour texture + clutter (lines, boxes, blobs) + pixel noise, RGB uint8."""
    base = rng.uniform(40, 215, (rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
    base = base.mean(axis=2, keepdims=True) * 0.5 + base * 0.5  # muted, scene-like colours
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.normal(0, 18, (h // 8, w // 8, 3)).astype(np.float32), (w, h))
    img = np.clip(img + fine, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(int(c) for c in rng.integers(30, 230, 3))
        kind = rng.integers(3)
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if kind == 0:
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            p2 = (p1[0] + int(rng.integers(10, 80)), p1[1] + int(rng.integers(10, 80)))
            cv2.rectangle(img, p1, p2, colour, -1)
        else:
            axes = (int(rng.integers(5, 40)), int(rng.integers(5, 40)))
            cv2.ellipse(img, p1, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _occluder(rng, canvas: np.ndarray, ids: np.ndarray, target: np.ndarray, size: float) -> None:
    """An opaque shape (box, pole or blob) over part of a figure centred near ``target``."""
    colour = tuple(int(c) for c in rng.integers(20, 235, 3))
    c = target + rng.normal(0, size * 0.25, 2)
    if rng.random() < 0.5:
        half = np.array([rng.uniform(0.1, 0.45), rng.uniform(0.08, 0.3)]) * size
        if rng.random() < 0.4:  # a pole
            half = np.array([size * rng.uniform(0.04, 0.1), size * rng.uniform(0.4, 0.9)])
        p1, p2 = _pt(c - half), _pt(c + half)
        cv2.rectangle(canvas, p1, p2, colour, -1)
        cv2.rectangle(ids, p1, p2, 255, -1)
    else:
        axes = (max(2, int(size * rng.uniform(0.1, 0.3))), max(2, int(size * rng.uniform(0.08, 0.25))))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(canvas, _pt(c), axes, angle, 0, 360, colour, -1, cv2.LINE_AA)
        cv2.ellipse(ids, _pt(c), axes, angle, 0, 360, 255, -1)


def _mask_polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for cnt in contours:
        if len(cnt) >= 3:
            polys.append([float(v) for v in cnt.reshape(-1)])
    return polys


def _poly_area(polys: list[list[float]], h: int, w: int) -> float:
    if not polys:
        return 0.0
    rles = mask_utils.frPyObjects(polys, h, w)
    return float(mask_utils.area(mask_utils.merge(rles)))


def render_image(seed: int, split: str, index: int, cfg: SyntheticConfig = SyntheticConfig()):
    """One image: ``(image RGB uint8 (H, W, 3), annotations without ids)`` — a pure function of its args."""
    rng = np.random.default_rng([seed, SPLIT_CODES.get(split, 99), index])
    sizes = np.arange(cfg.min_size, cfg.max_size + 1, 32)
    h, w = int(rng.choice(sizes)), int(rng.choice(sizes))
    canvas = background(rng, h, w)
    ids = np.zeros((h, w), np.uint8)
    anns: list[dict] = []

    # Crowd region first (it is "far away", behind everyone): a cluster of tiny unlabelled figures.
    if rng.random() < cfg.crowd_prob:
        centre = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.15, 0.5) * h])
        crowd_ids = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(5, 12))):
            th = rng.uniform(12, 22)
            pelvis = centre + rng.normal(0, [w * 0.07, h * 0.03])
            jts, hr = figure_joints(rng, th, pelvis)
            draw_figure(canvas, crowd_ids, 1, jts, hr, th, rng)
        rle = mask_utils.encode(np.asfortranarray(crowd_ids))
        area = float(mask_utils.area(rle))
        if area > 0:
            x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
            # Crowd segmentations are uncompressed RLE in COCO.
            flat = crowd_ids.reshape(-1, order="F")
            change = np.flatnonzero(np.diff(flat)) + 1
            bounds = np.concatenate([[0], change, [flat.size]])
            counts = np.diff(bounds).tolist()
            if flat[0] != 0:
                counts = [0] + counts
            anns.append(
                {
                    "segmentation": {"counts": [int(c) for c in counts], "size": [h, w]},
                    "num_keypoints": 0,
                    "area": area,
                    "iscrowd": 1,
                    "keypoints": [0] * 51,
                    "bbox": [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)],
                    "category_id": 1,
                }
            )
        ids[crowd_ids > 0] = 254

    # Labelled figures.
    n = int(rng.choice(np.arange(1, len(cfg.people_weights) + 1), p=np.asarray(cfg.people_weights)))
    people = []
    for _ in range(n):
        small = rng.random() < cfg.small_fraction
        height = rng.uniform(42, 74) if small else rng.uniform(85, min(h, w) * 0.85)
        if people and rng.random() < cfg.near_prob:  # next to someone: overlap
            other = people[int(rng.integers(len(people)))]
            pelvis = other[1] + rng.normal(0, 1, 2) * np.array([0.25, 0.1]) * max(height, other[0])
        else:
            pelvis = np.array([rng.uniform(0.05, 0.95) * w, rng.uniform(0.25, 0.85) * h])
        jts, hr = figure_joints(rng, height, pelvis)
        # Keep the figure mostly in the image (a few still leave it, giving v=0 joints).
        lo, hi = jts.min(0) - hr, jts.max(0) + hr
        shift = np.zeros(2)
        for d, size in ((0, w), (1, h)):
            if lo[d] < -0.15 * (hi[d] - lo[d]):
                shift[d] = -lo[d] - rng.uniform(0, 0.15) * (hi[d] - lo[d])
            elif hi[d] > size + 0.15 * (hi[d] - lo[d]):
                shift[d] = size - hi[d] + rng.uniform(0, 0.15) * (hi[d] - lo[d])
        people.append((height, pelvis + shift, jts + shift, hr))
    # Farther (smaller, higher feet) first so nearer figures occlude them.
    order = sorted(range(n), key=lambda i: people[i][2][15:17, 1].max())
    for rank, i in enumerate(order):
        height, _, jts, hr = people[i]
        draw_figure(canvas, ids, rank + 1, np.round(jts), hr, height, rng)
    if rng.random() < cfg.occluder_prob:
        for _ in range(int(rng.integers(1, 3))):
            height, pelvis, _, _ = people[int(rng.integers(n))]
            _occluder(rng, canvas, ids, pelvis, height)

    for rank, i in enumerate(order):
        height, _, jts, hr = people[i]
        pts = np.round(jts).astype(np.int64)
        kpts = np.zeros((17, 3), np.int64)
        inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
        for k in np.flatnonzero(inside):
            x, y = pts[k]
            patch = ids[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
            visible = np.mean(patch == rank + 1) >= 0.5
            if visible:
                kpts[k] = (x, y, 2)
            elif rng.random() < 0.75:  # occluded: usually still labelled (v=1), as in COCO
                kpts[k] = (x, y, 1)
        polys = _mask_polygons(ids == rank + 1)
        area = _poly_area(polys, h, w)
        if area <= 0:
            continue
        xs, ys = pts[inside, 0], pts[inside, 1]
        seg = np.concatenate([np.asarray(p).reshape(-1, 2) for p in polys])
        x0 = float(min(seg[:, 0].min(), xs.min() if len(xs) else np.inf))
        y0 = float(min(seg[:, 1].min(), ys.min() if len(ys) else np.inf))
        x1 = float(max(seg[:, 0].max(), xs.max() if len(xs) else -np.inf))
        y1 = float(max(seg[:, 1].max(), ys.max() if len(ys) else -np.inf))
        anns.append(
            {
                "segmentation": polys,
                "num_keypoints": int(np.count_nonzero(kpts[:, 2])),
                "area": round(area, 2),
                "iscrowd": 0,
                "keypoints": [int(v) for v in kpts.reshape(-1)],
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0 + 1, 2), round(y1 - y0 + 1, 2)],
                "category_id": 1,
            }
        )
    return canvas, anns


# -- writing a split ----------------------------------------------------------------------------------


def _work(args):
    seed, split, index, img_dir, cfg = args
    image, anns = render_image(seed, split, index, cfg)
    name = f"{index:012d}.jpg"
    ok = cv2.imwrite(
        os.path.join(img_dir, name),
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality],
    )
    if not ok:
        raise OSError(f"could not write {os.path.join(img_dir, name)}")
    return index, name, image.shape[0], image.shape[1], anns


def categories() -> list[dict]:
    """COCO's person category: keypoint names and the 1-based skeleton, from ``specs.COCO``."""
    return [
        {
            "supercategory": "person",
            "id": 1,
            "name": "person",
            "keypoints": list(COCO.joint_names),
            "skeleton": [[a + 1, b + 1] for a, b in COCO.skeleton],
        }
    ]


def write_split(
    root: str, split: str, num_images: int, seed: int, workers: int = 0, cfg: SyntheticConfig = SyntheticConfig()
) -> dict:
    """Render ``num_images`` images into ``root/images/<split>/`` and write
    ``root/annotations/person_keypoints_<split>.json`` (last, atomically). Returns the json dict."""
    img_dir = os.path.join(root, "images", split)
    ann_dir = os.path.join(root, "annotations")
    if os.path.isdir(img_dir):
        shutil.rmtree(img_dir)  # stale images of an earlier, larger or interrupted run
    os.makedirs(img_dir)
    os.makedirs(ann_dir, exist_ok=True)
    jobs = [(seed, split, i, img_dir, cfg) for i in range(num_images)]
    workers = workers or min(os.cpu_count() or 1, 4)
    if workers > 1 and num_images >= 16:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_work, jobs, chunksize=max(1, num_images // (workers * 8)))
    else:
        results = [_work(j) for j in jobs]
    images, annotations = [], []
    for index, name, h, w, anns in sorted(results, key=lambda r: r[0]):
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    data = {
        "info": {"description": f"HigherPose synthetic keypoints ({split}, seed {seed})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    path = os.path.join(ann_dir, f"person_keypoints_{split}.json")
    fd, tmp = tempfile.mkstemp(dir=ann_dir, prefix=f".{split}.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, path)
    return data


def split_stats(data: dict) -> dict:
    """Images, persons (labelled, non-crowd), persons per image, % small (< 32² px), % overlapping, crowds."""
    by_image: dict[int, list[dict]] = {}
    crowds = 0
    for ann in data["annotations"]:
        if ann["iscrowd"]:
            crowds += 1
        elif ann["num_keypoints"] > 0:
            by_image.setdefault(ann["image_id"], []).append(ann)
    persons = sum(len(v) for v in by_image.values())
    small = sum(a["area"] < 32 * 32 for v in by_image.values() for a in v)
    overlapping = 0
    for anns in by_image.values():
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        x0, y0 = boxes[:, 0], boxes[:, 1]
        x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
        iw = np.clip(np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]), 0, None)
        ih = np.clip(np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]), 0, None)
        inter = iw * ih
        np.fill_diagonal(inter, 0)
        overlapping += int(np.count_nonzero(inter.max(axis=1, initial=0) > 0))
    n_img = len(data["images"])
    return {
        "images": n_img,
        "persons": persons,
        "persons_per_image": persons / max(n_img, 1),
        "pct_small": 100.0 * small / max(persons, 1),
        "pct_overlapping": 100.0 * overlapping / max(persons, 1),
        "crowd_regions": crowds,
    }


def format_stats(split: str, s: dict) -> str:
    return (
        f"{split}: {s['images']} images, {s['persons']} persons, {s['persons_per_image']:.2f} persons/image, "
        f"{s['pct_small']:.1f}% persons with area < 32^2, {s['pct_overlapping']:.1f}% persons overlapping another, "
        f"{s['crowd_regions']} crowd regions"
    )


def generate(
    root: str,
    num_train: int = 800,
    num_val: int = 100,
    seed: int = 0,
    workers: int = 0,
    verbose: bool = True,
    cfg: SyntheticConfig = SyntheticConfig(),
) -> dict[str, dict]:
    """Write the train and val splits under ``root``; returns each split's :func:`split_stats`."""
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, _MARKER)
    with open(marker, "w") as f:
        f.write("generation in progress or interrupted; rerun tools/make_synthetic.py\n")
    for split in ("train", "val"):  # drop json of an earlier run first: the set is complete only at the end
        path = os.path.join(root, "annotations", f"person_keypoints_{split}.json")
        if os.path.exists(path):
            os.remove(path)
    stats = {}
    for split, n in (("train", num_train), ("val", num_val)):
        data = write_split(root, split, n, seed, workers, cfg)
        stats[split] = split_stats(data)
        if verbose:
            print(format_stats(split, stats[split]), flush=True)
    os.remove(marker)
    return stats


def is_complete(root: str) -> bool:
    """Both json files present and no interrupted-run marker."""
    return not os.path.exists(os.path.join(root, _MARKER)) and all(
        os.path.isfile(os.path.join(root, "annotations", f"person_keypoints_{s}.json")) for s in ("train", "val")
    )


def ensure_synthetic(root: str, num_train: int = 800, num_val: int = 100, seed: int = 0, verbose: bool = True) -> bool:
    """Generate the synthetic set under ``root`` unless a complete one is there. True if it generated."""
    if is_complete(root):
        return False
    # Several processes (DDP ranks) may get here at once: one generates, the others wait for it.
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    with open(os.path.abspath(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_complete(root):
                return False
            if verbose:
                print(f"synthetic data set missing or incomplete under {root}: generating it (seed {seed})", flush=True)
            generate(root, num_train, num_val, seed, verbose=verbose)
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
