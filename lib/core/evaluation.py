"""Keypoint evaluation (COCO with pycocotools, CrowdPose with faster-coco-eval), result writing and the
validation loop shared by tools/valid.py and training.

Result files follow HigherHRNet's ``CocoDataset.evaluate``: one dict per person with the flattened
``(x, y, heat value)`` keypoints, the person score, ``image_id`` and ``category_id`` 1; no OKS-NMS or
rescoring. Differences: plain Python floats (HigherHRNet's ``np.float`` fails on NumPy >= 1.24),
atomic writing, clear errors for unknown image ids, the CrowdPose API replaced by faster-coco-eval's
``keypoints_crowd`` (same numbers, see ../shared/data/README.md), and COCO-format ground truth without
``area`` / ``bbox`` / ``iscrowd`` / ``num_keypoints`` (common in custom sets) completed in memory, where
pycocotools would stop with a ``KeyError``. The ground truth the evaluator sees is prepared in memory
(:func:`load_ground_truth`): the keypoint categories in use become one category (the results' id 1),
and a subset run cuts it to the subset's images, so that every statistic covers those images only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from higherpose.dataset.annotations import (
    CategorySelection,
    coco_from_dict,
    drop_repeated_annotations,
    keep_categories,
    read_annotations,
    select_categories,
)
from higherpose.dataset.crowd_index import add_crowd_index
from higherpose.dataset.specs import COCO as COCO_SPEC
from higherpose.dataset.specs import CROWDPOSE
from higherpose.utils.atomic import write_json_atomic

COCO_NAMES = ["AP", "Ap .5", "AP .75", "AP (M)", "AP (L)", "AR", "AR .5", "AR .75", "AR (M)", "AR (L)"]
CROWDPOSE_NAMES = ["AP", "Ap .5", "AP .75", "AR", "AR .5", "AR .75", "AP (E)", "AP (M)", "AP (H)"]

_log = logging.getLogger(__name__)


def poses_to_coco_results(image_id: int, poses: Sequence[np.ndarray], scores: Sequence[float]) -> list[dict]:
    """COCO result dicts for one image. poses[p]: (K, >=3) rows (x, y, score, ...); scores[p]: float."""
    if len(poses) != len(scores):
        raise ValueError(f"image {image_id}: {len(poses)} poses but {len(scores)} scores")
    results = []
    for pose, score in zip(poses, scores):
        kpts = np.asarray(pose, dtype=np.float64)[:, :3]
        left_top, right_bottom = kpts.min(axis=0), kpts.max(axis=0)
        results.append(
            {
                "image_id": int(image_id),
                "category_id": 1,
                "keypoints": [float(v) for v in kpts.reshape(-1)],
                "score": float(score),
                "bbox": [
                    float(left_top[0]),
                    float(left_top[1]),
                    float(right_bottom[0] - left_top[0]),
                    float(right_bottom[1] - left_top[1]),
                ],
            }
        )
    return results


def write_results_json(results: list[dict], path: str) -> str:
    """Write ``results`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    return write_json_atomic(results, path)


def _check_image_ids(results: Iterable[dict], known: Iterable[int], gt_json_path: str) -> None:
    known = set(known)
    unknown = sorted({r["image_id"] for r in results} - known)
    if unknown:
        shown = ", ".join(str(i) for i in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise ValueError(f"{len(unknown)} result image ids are not in {gt_json_path}: {shown}")


def _labelled_extent(keypoints: Sequence[float]) -> list[float]:
    """``[x, y, w, h]`` around the labelled joints (v > 0) of a flat ``(x, y, v) * K`` list; zeros when none."""
    kpts = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    labelled = kpts[kpts[:, 2] > 0, :2]
    if not len(labelled):
        return [0.0, 0.0, 0.0, 0.0]
    (x0, y0), (x1, y1) = labelled.min(axis=0), labelled.max(axis=0)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def complete_coco_annotations(dataset: dict) -> dict[str, int]:
    """Add, in place, the annotation fields pycocotools' keypoint evaluation reads and custom COCO-format
    files often lack: ``area`` (bbox ``w * h``, else the extent of the labelled keypoints), ``bbox``
    (that extent), ``num_keypoints`` (labelled joints), ``iscrowd`` (0) and ``keypoints`` (all
    unlabelled, e.g. for a crowd region: COCOeval's OKS reads them for every annotation). Present
    fields are kept. Returns how many annotations got each field, and ``area_from_bbox`` /
    ``area_from_keypoints``."""
    names = ("area", "area_from_bbox", "area_from_keypoints", "bbox", "num_keypoints", "iscrowd", "keypoints")
    counts = dict.fromkeys(names, 0)
    annotations = dataset.get("annotations", [])
    num_values = next((len(a["keypoints"]) for a in annotations if a.get("keypoints")), 0)  # 3 K
    for ann in annotations:
        if not ann.get("keypoints") and num_values:  # absent, or null as some crowd regions have
            ann["keypoints"] = [0] * num_values
            counts["keypoints"] += 1
        keypoints = ann.get("keypoints") or []
        if "area" not in ann:
            has_box = "bbox" in ann and len(ann["bbox"]) == 4
            w, h = (ann["bbox"][2], ann["bbox"][3]) if has_box else _labelled_extent(keypoints)[2:]
            ann["area"] = float(w) * float(h)
            counts["area"] += 1
            counts["area_from_bbox" if has_box else "area_from_keypoints"] += 1
        if "bbox" not in ann:  # COCOeval's OKS measures unlabelled persons against their box
            ann["bbox"] = _labelled_extent(keypoints)
            counts["bbox"] += 1
        if "num_keypoints" not in ann:
            ann["num_keypoints"] = int(sum(1 for v in keypoints[2::3] if v > 0))
            counts["num_keypoints"] += 1
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            counts["iscrowd"] += 1
    return counts


def _as_one_category(data: dict, selection: CategorySelection) -> None:
    """In place: keep the annotations of the selected categories and make them one category, id 1, as
    the results carry (:func:`poses_to_coco_results`); pycocotools and faster-coco-eval average their
    AP over the categories of the ground truth, so persons of a second category would all be missed."""
    keep_categories(data, selection)
    declared = {c["id"]: c for c in data.get("categories") or [] if isinstance(c, dict) and "id" in c}
    first = declared.get(selection.ids[0], {}) if selection.ids else {}
    name = "+".join(str(selection.names.get(i, i)) for i in selection.ids)[:200] or "keypoints"
    data["categories"] = [dict(first, id=1, name=name)]
    for ann in data.get("annotations", []):
        ann["category_id"] = 1


def _cut_to_images(data: dict, image_ids: Sequence[int], gt_json_path: str) -> None:
    """In place: keep the images ``image_ids`` and their annotations, so that every statistic (CrowdPose's
    easy / medium / hard ones included, which the evaluator takes from every image of its ground truth)
    covers those images only."""
    wanted = {int(i) for i in image_ids}
    known = {image["id"] for image in data.get("images", [])}
    missing = sorted(wanted - known)
    if missing:
        shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise ValueError(f"{len(missing)} image ids of the subset are not in {gt_json_path}: {shown}")
    data["images"] = [image for image in data.get("images", []) if image["id"] in wanted]
    data["annotations"] = [ann for ann in data.get("annotations", []) if ann.get("image_id") in wanted]


def load_ground_truth(
    gt_json_path: str,
    dataset: str,
    category_ids: Sequence[int] | None = None,
    image_ids: Sequence[int] | None = None,
) -> tuple[dict, list[int]]:
    """The ground truth of ``gt_json_path`` as the evaluator sees it (an in-memory copy; the file is only
    read), and every image id of the file.

    Exact repeats of an annotation are dropped, and two annotations with one id raise
    :class:`AnnotationError` (:func:`drop_repeated_annotations`); the keypoint categories ``category_ids``
    (None or empty: every category with keypoints, as ``DATASET.CATEGORY_IDS``) become one category
    with id 1 and the others are left out; ``image_ids`` (a subset run) keeps those images only; for COCO
    and custom sets the fields :func:`complete_coco_annotations` adds are completed. Logs what changed.
    """
    data = read_annotations(gt_json_path)
    repeated = drop_repeated_annotations(data, gt_json_path)
    if repeated:
        _log.warning("%s: annotations repeating an earlier one exactly: %d (one of each is evaluated)",
                     gt_json_path, len(repeated))  # fmt: skip
    selection = select_categories(data, tuple(category_ids or ()), None, gt_json_path)
    if selection.others:
        _log.info(selection.describe(gt_json_path))
    _as_one_category(data, selection)
    all_ids = [image["id"] for image in data.get("images", [])]
    if image_ids is not None:
        _cut_to_images(data, image_ids, gt_json_path)
    if dataset == "crowd_pose":
        return data, all_ids  # CrowdPose files have no area; use_area=False means it is never read
    counts = complete_coco_annotations(data)
    if counts["area"]:
        _log.info(
            "%s: %d of %d annotations have no 'area': computed from the bbox (w*h) for %d, from the labelled "
            "keypoints' extent for %d",
            gt_json_path, counts["area"], len(data.get("annotations", [])),
            counts["area_from_bbox"], counts["area_from_keypoints"],
        )  # fmt: skip
    filled = [
        f"'{k}' for {n}" for k, n in counts.items() if n and k in ("bbox", "num_keypoints", "iscrowd", "keypoints")
    ]
    if filled:
        _log.info("%s: computed missing %s annotations", gt_json_path, ", ".join(filled))
    return data, all_ids


def _empty_results(gt: Any, coco_class: type) -> Any:
    """A result set without detections for ``gt`` (pycocotools' ``loadRes([])`` fails on the empty list),
    so that empty results go through the evaluator like any others."""
    dt = coco_class()
    dt.dataset = {
        "images": list(gt.dataset.get("images", [])),
        "categories": copy.deepcopy(gt.dataset.get("categories", [])),
        "annotations": [],
    }
    dt.createIndex()
    return dt


def evaluate_keypoints(
    gt_json_path: str,
    results: list[dict],
    dataset: str,
    sigmas: Sequence[float] | None = None,
    image_ids: Sequence[int] | None = None,
    category_ids: Sequence[int] | None = None,
    crowd_index: bool = False,
) -> OrderedDict:
    """Keypoint AP/AR of ``results`` against the annotations in ``gt_json_path``.

    dataset: 'coco' (pycocotools ``COCOeval(..., 'keypoints')``), 'crowd_pose' (faster-coco-eval
    ``keypoints_crowd``, CrowdPose sigmas, ``use_area=False``) or 'custom' (COCO evaluation with
    ``sigmas``, default COCO's). ``image_ids`` restricts every statistic to those images (a subset
    run): the ground truth is cut to them, and results of other images of the file are left out.
    ``category_ids``: the keypoint categories evaluated as one class against every result (None or
    empty: every category with keypoints); annotations of other categories are left out. The ground
    truth is prepared in memory by :func:`load_ground_truth`; the file is never changed.
    ``crowd_index`` ('coco' / 'custom', ``DATASET.CROWD_INDEX_EVAL``): evaluated as CrowdPose is, with
    faster-coco-eval's ``keypoints_crowd`` and CrowdPose's names (AP (E)/(M)/(H): images by crowdIndex),
    but with the set's sigmas and COCO's OKS scale (the annotations' ``area``), so AP, AP .5 and AP .75
    are COCO's; images without ``crowdIndex`` get one computed from their annotations
    (:mod:`higherpose.dataset.crowd_index`).
    Returns an OrderedDict of the evaluator's stats (names as HigherHRNet). Empty results are evaluated
    too: 0 where there are persons, -1 (the evaluator's "no such persons") for a size range without any,
    as with detections.
    """
    if dataset not in ("coco", "crowd_pose", "custom"):
        raise ValueError(f"dataset = {dataset!r}: choose 'coco', 'crowd_pose' or 'custom'")
    crowd = dataset == "crowd_pose" or crowd_index
    names = CROWDPOSE_NAMES if crowd else COCO_NAMES
    data, all_ids = load_ground_truth(gt_json_path, dataset, category_ids, image_ids)
    if crowd_index and dataset != "crowd_pose":
        added = add_crowd_index(data)
        if added:
            _log.info("%s: crowdIndex computed for %d images that had none", gt_json_path, added)
    _check_image_ids(results, all_ids, gt_json_path)
    if image_ids is not None:
        wanted = {int(i) for i in image_ids}
        results = [r for r in results if r["image_id"] in wanted]
    results = [dict(r) for r in results]  # the evaluators add fields (area, id) to the dicts
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        if crowd:
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as COCOeval

            # faster-coco-eval takes the easy / medium / hard images from this object's data: the cut set
            gt = COCO(data)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            gt = coco_from_dict(data)
        dt = gt.loadRes(results) if results else _empty_results(gt, COCO)
        if crowd:
            default_sigmas = CROWDPOSE.sigmas if dataset == "crowd_pose" else COCO_SPEC.sigmas
            ev = COCOeval(
                gt,
                dt,
                iouType="keypoints_crowd",
                kpt_oks_sigmas=list(sigmas or default_sigmas),
                use_area=dataset != "crowd_pose",  # CrowdPose's files have no area: 0.53 x its box instead
                print_function=lambda *a, **k: None,
            )
        else:
            ev = COCOeval(gt, dt, "keypoints")
            ev.params.useSegm = None
            if dataset == "custom" and sigmas is not None:
                ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # faster-coco-eval's keypoints_crowd stats are already the 9 CrowdPose numbers in this order
    # (the CrowdPose API's stats[[0, 1, 2, 5, 6, 7, 8, 9, 10]]); COCO's are its first 10.
    stats = [float(s) for s in ev.stats[: len(names)]]
    _log.debug(quiet.getvalue())
    return OrderedDict(zip(names, stats))


def print_name_value(logger: logging.Logger | None, name_value: OrderedDict, full_arch_name: str) -> str:
    """Log (and return) HigherHRNet's markdown table ``| Arch | AP | ... |`` with 3-decimal values; arch
    names longer than 15 characters are cut to ``name[:8] + '...'``."""
    names, values = list(name_value.keys()), list(name_value.values())
    if len(full_arch_name) > 15:
        full_arch_name = full_arch_name[:8] + "..."
    lines = [
        "| Arch " + " ".join(f"| {name}" for name in names) + " |",
        "|---" * (len(names) + 1) + "|",
        "| " + full_arch_name + " " + " ".join(f"| {value:.3f}" for value in values) + " |",
    ]
    for line in lines:
        (logger or _log).info(line)
    return "\n".join(lines)
