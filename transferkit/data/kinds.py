"""Which task a dataset folder is laid out for: class folders, images with masks, or images with boxes.

Each folder loader reads one layout, and without this check would misread another task's folder
without an error: a segmentation folder (``train/images`` + ``train/masks``) became a classifier of the
two classes "images" and "masks", a COCO folder a classifier of one class. `folder_kinds` tells the
layouts apart from the names in ``root/train`` alone (no file is opened); the loaders call
`check_folder_kind` first, and `image_folder_loaders` refuses a train split of one class
(`check_two_classes`).

Examples:
    >>> import tempfile
    >>> from transferkit.data import make_shapes_segmentation_folder
    >>> root = make_shapes_segmentation_folder(tempfile.mkdtemp(), per_split={"train": 1}, image_size=32)
    >>> folder_kinds(root)
    [FolderKind(task='segmentation', evidence='train/images and train/masks')]
    >>> check_folder_kind(root, "classification")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: ... looks like a segmentation folder (...), not the ... layout ... read it with ...
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = ["FOLDER_LOADERS", "FolderKind", "check_folder_kind", "check_two_classes", "folder_kinds"]

# the loader that reads each task's folder layout
FOLDER_LOADERS = {
    "classification": "image_folder_loaders",
    "segmentation": "segmentation_folder_loaders",
    "detection": "detection_folder_loaders",
}
# names in root/train that belong to the segmentation and detection layouts, never to class folders
_LAYOUT_NAMES = ("images", "masks", "annotations", "annotations.json")


class FolderKind(NamedTuple):
    """A task whose folder layout a dataset folder has, and what in ``root/train`` says so.

    Examples:
        >>> FolderKind("segmentation", "train/images and train/masks").task
        'segmentation'
    """

    task: str  # "classification", "segmentation" or "detection"
    evidence: str  # e.g. "train/images and train/masks"


def folder_kinds(root: str | Path) -> list[FolderKind]:
    """The tasks whose folder layout ``root`` has, from the names in ``root/train``.

    Segmentation: ``train/images`` and ``train/masks``; detection: ``train/images`` and
    ``train/annotations.json`` (COCO) or ``train/annotations/`` (Pascal VOC); a folder may have both.
    Classification: sub-folders of ``train`` (the classes) and none of those names. Empty when
    ``root/train`` is missing or its layout is broken (``train/images`` alone): the loaders then name
    what is missing.

    Examples:
        >>> import tempfile
        >>> from transferkit.data import make_shapes_folder
        >>> folder_kinds(make_shapes_folder(tempfile.mkdtemp(), num_classes=2, per_class={"train": 1}))
        [FolderKind(task='classification', evidence='class folders under train/: circle, square')]
    """
    train = Path(root) / "train"
    if not train.is_dir():
        return []
    kinds = []
    if (train / "images").is_dir():
        if (train / "masks").is_dir():
            kinds.append(FolderKind("segmentation", "train/images and train/masks"))
        if (train / "annotations.json").is_file():
            kinds.append(FolderKind("detection", "train/images and train/annotations.json, COCO"))
        elif (train / "annotations").is_dir():
            kinds.append(FolderKind("detection", "train/images and train/annotations/, Pascal VOC"))
    if kinds or any((train / name).exists() for name in _LAYOUT_NAMES):
        return kinds
    classes = sorted(p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        return []
    shown = ", ".join(classes[:5]) + (f" and {len(classes) - 5} more" if len(classes) > 5 else "")
    return [FolderKind("classification", f"class folders under train/: {shown}")]


def describe_kinds(kinds: Sequence[FolderKind]) -> str:
    """``"a segmentation folder (train/images and train/masks)"``, joined with "and" for several."""
    return " and ".join(f"a {kind.task} folder ({kind.evidence})" for kind in kinds)


def check_folder_kind(root: str | Path, task: str) -> None:
    """Refuse ``root`` when its layout is another task's than ``task`` (the loader being called).

    Raises:
        ValueError: ``root`` looks like another task's folder; the message names the loader to use.
    """
    kinds = folder_kinds(root)
    if not kinds or task in {kind.task for kind in kinds}:
        return
    loaders = " or ".join(f"{FOLDER_LOADERS[kind.task]}(root, model)" for kind in kinds)
    raise ValueError(
        f"{root} looks like {describe_kinds(kinds)}, not the {task} layout that {FOLDER_LOADERS[task]} "
        f"reads; read it with {loaders}, with a model whose head is for that task"
    )


def check_two_classes(train_dir: Path, classes: Sequence[str]) -> None:
    """Refuse a classification train split of fewer than 2 classes: a classifier needs a choice.

    Raises:
        ValueError: ``classes`` holds one name; the message names it and what to add.
    """
    if len(classes) >= 2:
        return
    hint = ""
    if classes and classes[0] in _LAYOUT_NAMES:
        hint = (
            f" (a folder named {classes[0]!r} belongs to a segmentation or detection folder: see "
            "segmentation_folder_loaders and detection_folder_loaders for their layouts)"
        )
    raise ValueError(
        f"{train_dir} holds one class folder, {classes[0]!r}, and a classifier needs at least 2 classes: "
        f"add a folder of images for each other class ({train_dir}/<class>/*.jpg){hint}"
    )
