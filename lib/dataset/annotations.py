"""Reading a COCO-format annotation json and refusing what would train or evaluate wrongly.

Every fault is an :class:`AnnotationError` whose one-line message starts with the file and names the
annotation (``annotation id 42 (image 785)``, or ``annotations[7]`` when it has no id), so a user can
find it in a file of a quarter of a million annotations. Checked when a dataset is built:

- the file is JSON (else the position of the first error, and whether the file ends early);
- every annotation has an ``id`` and an ``image_id`` of an image in ``images``: pycocotools indexes
  annotations of unknown images all the same, and an annotation without ``id`` fails in its index;
- ``keypoints`` is ``3·K`` long, and ``keypoints`` / ``bbox`` / ``area`` / ``num_keypoints`` hold
  finite numbers only: a NaN joint makes NaN heatmaps in training, and in COCOeval a NaN OKS passes
  the matcher's ``oks < threshold`` skip (False for NaN), so the person counts as found and the AP rises.

A training set also needs a labelled person (:func:`check_labelled_persons`); without one the
DataLoader fails later with torch's ``num_samples=0``, or trains on empty targets.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable
from typing import Any

from pycocotools.coco import COCO


class AnnotationError(ValueError):
    """An annotation file is unreadable or holds an annotation that cannot be used; the message names
    the file and the annotation."""


# How a position in these fields reads in a message (keypoints: joint index and x / y / v).
_BBOX_PARTS = ("x", "y", "w", "h")
_KEYPOINT_PARTS = ("x", "y", "v")
# Fields holding one number; the others checked hold lists of numbers.
_SCALARS = ("area", "num_keypoints")


def read_annotations(path: str) -> dict:
    """The json object of ``path``; an :class:`AnnotationError` naming the file and the line and column
    when it is not JSON (``json`` accepts the bare words NaN / Infinity: those are checked later)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark, as some Windows editors write, is no fault
    except UnicodeDecodeError as err:
        raise AnnotationError(f"{path}: not UTF-8 text (byte {err.start}): not a JSON annotation file") from None
    del raw  # COCO train2017 keypoints is about 240 MB: keep one copy while it is parsed
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        # A copy or download cut short fails at its very end: say so, it is the usual cause.
        ends_early = err.pos >= len(text.rstrip())
        hint = ": the file ends early (truncated?)" if ends_early else ""
        raise AnnotationError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}){hint}"
        ) from None
    if not isinstance(data, dict):
        raise AnnotationError(
            f"{path}: expected a JSON object with 'images' and 'annotations', got a {type(data).__name__}"
        )
    return data


def coco_from_dict(data: dict) -> COCO:
    """pycocotools ``COCO`` indexing ``data`` (the object itself, not a copy), without its console chatter."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _first_bad(values: list | tuple) -> int | None:
    """Index of the first value of ``values`` that is not a finite number, None when all are."""
    try:
        total = sum(values)  # one C loop for the common case: finite numbers give a finite sum
    except TypeError:
        total = math.nan
    if isinstance(total, (int, float)) and math.isfinite(total):
        return None
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return i
    return None  # finite values whose sum overflowed


def _bad_number(field: str, value: Any) -> str | None:
    """What is wrong with ``ann[field]`` (``keypoints`` / ``bbox``: a list; ``area``: a number), e.g.
    ``a non-finite keypoints[4] (joint 1 y) = nan``; None when it holds finite numbers only."""
    if field in _SCALARS:
        if _first_bad([value]) is None:
            return None
        return f"a {'non-finite' if isinstance(value, float) else 'non-numeric'} {field} = {value!r:.60}"
    if not isinstance(value, (list, tuple)):
        return f"a {field!r} that is not a list: {value!r:.60}"
    index = _first_bad(value)
    if index is None:
        return None
    bad = value[index]
    kind = "non-finite" if isinstance(bad, float) else "non-numeric"
    if field == "keypoints":
        part = f"joint {index // 3} {_KEYPOINT_PARTS[index % 3]}"
    else:
        part = _BBOX_PARTS[index] if index < len(_BBOX_PARTS) else f"value {index}"
    return f"a {kind} {field}[{index}] ({part}) = {bad!r:.60}"


def _name(ann: dict, position: int) -> str:
    """How a message names an annotation: by its id, or by its position when it has none."""
    where = f"annotation id {ann['id']}" if "id" in ann else f"annotations[{position}]"
    return f"{where} (image {ann.get('image_id')})"


def check_annotations(data: dict, num_joints: int, path: str) -> None:
    """Raise :class:`AnnotationError` for the first annotation of ``data`` (the json of ``path``) that
    cannot be used (see the module docstring); ``num_joints`` = K labelled joints per person."""
    annotations = data.get("annotations", [])
    images = data.get("images", [])
    if not isinstance(annotations, list) or not isinstance(images, list):
        raise AnnotationError(f"{path}: 'images' and 'annotations' must be lists")
    image_ids = set()
    for position, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image:
            raise AnnotationError(f"{path}: images[{position}] has no 'id'")
        image_ids.add(image["id"])
    for position, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise AnnotationError(f"{path}: annotations[{position}] is not an object: {ann!r:.60}")
        for key in ("id", "image_id"):
            if key not in ann:
                raise AnnotationError(f"{path}: {_name(ann, position)} has no {key!r}")
        if ann["image_id"] not in image_ids:
            raise AnnotationError(
                f"{path}: annotation id {ann['id']}: its image id {ann['image_id']} is not in 'images'"
            )
        kpts = ann.get("keypoints")
        if isinstance(kpts, list) and len(kpts) != 3 * num_joints:
            raise AnnotationError(
                f"{path}: {_name(ann, position)} has {len(kpts)} keypoint values, "
                f"expected 3 x {num_joints} = {3 * num_joints}"
            )
        for field in ("keypoints", "bbox", "area", "num_keypoints"):
            # null keypoints stand for none (crowd regions of some custom sets), as an absent field
            absent = ann.get(field) is None if field == "keypoints" else field not in ann
            problem = None if absent else _bad_number(field, ann[field])
            if problem is not None:
                raise AnnotationError(f"{path}: {_name(ann, position)} has {problem}")


def num_keypoints(ann: dict) -> int:
    """``num_keypoints`` of an annotation (counted from ``keypoints`` when the field is absent)."""
    if "num_keypoints" in ann:
        return int(ann["num_keypoints"])
    return sum(1 for v in (ann.get("keypoints") or [])[2::3] if v > 0)


def check_labelled_persons(annotations: Iterable[dict], path: str) -> None:
    """Raise :class:`AnnotationError` naming ``path`` when none of ``annotations`` labels a joint: a
    training set needs a person to learn from (images with unlabelled persons only are kept, as in
    HigherHRNet, for their masks, so an empty training set does not show as an empty id list)."""
    if not any(num_keypoints(ann) > 0 for ann in annotations):
        raise AnnotationError(
            f"{path}: no image has a labelled person (an annotation with num_keypoints > 0): nothing to train on"
        )
