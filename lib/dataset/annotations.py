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

These checks cover the annotations of the keypoint categories in use (:func:`select_categories`,
``DATASET.CATEGORY_IDS``), which are then kept (:func:`keep_categories`): several categories that share
one skeleton (one per species in animal sets) are one class, and a selected category whose
``keypoints`` list is not K long stops with its id and name. Two annotations with one id stop too,
naming the id and both images; an exact repeat is dropped (:func:`drop_repeated_annotations`).

A training set also needs a labelled person (:func:`check_labelled_persons`); without one the
DataLoader fails later with torch's ``num_samples=0``, or trains on empty targets.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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


def check_annotations(data: dict, num_joints: int, path: str, category_ids: Iterable | None = None) -> None:
    """Raise :class:`AnnotationError` for the first annotation of ``data`` (the json of ``path``) that
    cannot be used (see the module docstring); ``num_joints`` = K labelled joints per person. With
    ``category_ids`` only the annotations of those categories are checked (the others are not used)."""
    selected = None if category_ids is None else set(category_ids)
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
        if selected is not None and ann.get("category_id") not in selected:
            continue
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


def drop_repeated_annotations(data: dict, path: str) -> list:
    """Remove, in place, annotations of ``data`` (the json of ``path``) that repeat an earlier one exactly;
    returns their ids. Two different annotations with one id raise :class:`AnnotationError` naming the
    id and both images: pycocotools indexes annotations by id, so evaluation would keep only the last
    of the two while training used both (and an exact repeat would count as two persons in evaluation).
    Entries without an id are left for :func:`check_annotations` to report."""
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        return []
    first: dict = {}  # id -> position of its first annotation
    repeated: list[int] = []  # positions of exact repeats
    for position, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "id" not in ann:
            continue
        try:
            earlier = first.setdefault(ann["id"], position)
        except TypeError:  # an unhashable id (a list): not one pycocotools can index either
            raise AnnotationError(
                f"{path}: annotations[{position}] has an id that is not a number: {ann['id']!r:.60}"
            ) from None
        if earlier == position:
            continue
        if ann != annotations[earlier]:
            raise AnnotationError(
                f"{path}: annotation id {ann['id']} is used twice, by annotations[{earlier}] "
                f"(image {annotations[earlier].get('image_id')}) and annotations[{position}] "
                f"(image {ann.get('image_id')}): annotation ids must be unique"
            )
        repeated.append(position)
    if not repeated:
        return []
    drop = set(repeated)
    data["annotations"] = [ann for position, ann in enumerate(annotations) if position not in drop]
    return [annotations[position]["id"] for position in repeated]


@dataclass(frozen=True)
class CategorySelection:
    """The keypoint categories a data set trains and evaluates on, as one class.

    Attributes:
        ids: the selected category ids, in the order of the file's ``categories`` (``None`` stands for
            annotations without ``category_id`` in a file that declares no keypoint category).
        names: category id -> name (the id itself when the file does not declare it).
        counts: selected category id -> its annotations.
        others: category id -> annotations of the categories not selected.
    """

    ids: tuple
    names: dict
    counts: dict
    others: dict

    def describe(self, path: str) -> str:
        """One log line: the categories used with their annotations, and what is left out."""

        def plural(n: int) -> str:
            return f"{n} annotation{'' if n == 1 else 's'}"

        def label(cat_id) -> str:
            return "no category_id" if cat_id is None else f"{cat_id} {self.names.get(cat_id, cat_id)}"

        used = ", ".join(f"{label(i)} ({plural(self.counts.get(i, 0))})" for i in self.ids) or "none"
        line = f"{path}: keypoint categories used as one class: {used}"
        if self.others:
            left = ", ".join(f"{label(i)}: {n}" for i, n in self.others.items())
            line += f"; left out: {plural(sum(self.others.values()))} of other categories ({left})"
        return line


def select_categories(data: dict, category_ids: Sequence[int], num_joints: int | None, path: str) -> CategorySelection:
    """The keypoint categories of ``data`` (the json of ``path``) to use: ``category_ids``, or when empty
    every category declared with a ``keypoints`` list (a file that declares none: every category that
    an annotation with keypoints has). A requested id that the file neither declares nor uses, and a
    selected category whose ``keypoints`` list is not ``num_joints`` long (when given), raise
    :class:`AnnotationError` naming the category."""
    declared = {c["id"]: c for c in data.get("categories") or [] if isinstance(c, dict) and "id" in c}
    annotations = [a for a in data.get("annotations") or [] if isinstance(a, dict)]
    used: dict = {}
    for ann in annotations:
        cat_id = ann.get("category_id")
        if isinstance(cat_id, (list, dict)):
            raise AnnotationError(
                f"{path}: annotation id {ann.get('id')} has a category_id that is not an id: {cat_id!r:.60}"
            )
        used[cat_id] = used.get(cat_id, 0) + 1
    names = {i: str(c.get("name", i)) for i, c in declared.items()}
    if category_ids:
        unknown = [i for i in category_ids if i not in declared and i not in used]
        if unknown:
            known = ", ".join(f"{i} {names.get(i, '')}".strip() for i in list(declared)[:20]) or "none declared"
            raise AnnotationError(
                f"{path}: DATASET.CATEGORY_IDS = {list(category_ids)}: category {unknown[0]} is neither declared "
                f"in 'categories' nor used by an annotation (categories: {known})"
            )
        ids = tuple(dict.fromkeys(category_ids))
    else:
        ids = tuple(i for i, c in declared.items() if c.get("keypoints"))
        if not ids:
            with_keypoints = (a.get("category_id") for a in annotations if a.get("keypoints"))
            ids = tuple(dict.fromkeys(with_keypoints))
    for cat_id in ids:
        keypoints = declared.get(cat_id, {}).get("keypoints")
        if num_joints is not None and isinstance(keypoints, list) and keypoints and len(keypoints) != num_joints:
            how = "DATASET.CATEGORY_IDS names it" if category_ids else "every category with keypoints is used"
            raise AnnotationError(
                f"{path}: category {cat_id} {names.get(cat_id, '')!r} has {len(keypoints)} keypoints, expected "
                f"{num_joints} (DATASET.NUM_JOINTS); {how}: list the categories to use in DATASET.CATEGORY_IDS"
            )
    selected = set(ids)
    counts = {i: used.get(i, 0) for i in ids}
    others = {i: n for i, n in used.items() if i not in selected}
    return CategorySelection(ids=ids, names=names, counts=counts, others=others)


def keep_categories(data: dict, selection: CategorySelection) -> None:
    """Keep, in place, the annotations of ``data`` of the selected categories (entries that are not
    objects stay, for :func:`check_annotations` to report)."""
    annotations = data.get("annotations")
    if not isinstance(annotations, list) or not selection.others:
        return
    selected = set(selection.ids)
    data["annotations"] = [a for a in annotations if not isinstance(a, dict) or a.get("category_id") in selected]
