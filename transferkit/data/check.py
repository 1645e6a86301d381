"""An up-front check of a dataset's image files, run when the folder loaders are built.

A damaged file otherwise surfaces only when an epoch reaches it, deep inside a DataLoader worker. The
check reads each file's header (format, size) and its last bytes, without decoding pixels: a JPEG ends
with its end-of-image marker (``FF D9``) and a PNG with its ``IEND`` chunk. Only a file whose end looks
wrong is decoded, to confirm (a JPEG may carry data after its image, as motion photos do), so the check
refuses exactly the files that training would fail on for these reasons. Every bad file is listed in one
error; a thousand small files take a fraction of a second.

Examples:
    >>> import tempfile
    >>> from transferkit.data import make_shapes_folder
    >>> root = make_shapes_folder(tempfile.mkdtemp(), num_classes=2, per_class={"train": 2})
    >>> files = sorted((root / "train").rglob("*.jpg"))
    >>> check_image_files(files)  # all readable: nothing happens
    >>> files[0].write_bytes(files[0].read_bytes()[:200])  # truncated
    200
    >>> check_image_files(files)
    Traceback (most recent call last):
    OSError: 1 of 4 image files under ... cannot be read: circle/circle_0000.jpg (truncated: ...
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image

from .folders import _pixels_problem

__all__ = ["check_dataset_files", "check_image_files", "image_file_problem"]

_SHOWN = 10  # bad files named in the error; the rest are counted
_JPEG_END = b"\xff\xd9"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # an empty IEND chunk with its CRC
_ENDINGS = {"JPEG": (_JPEG_END, "no JPEG end-of-image marker"), "PNG": (_PNG_END, "no PNG IEND chunk")}


def image_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the image file at ``path`` cannot be read, from its header and last bytes; None when it can.

    Examples:
        >>> image_file_problem(__file__)
        'not an image file PIL can read'
    """
    try:
        if os.path.getsize(path) == 0:
            return "an empty file (0 bytes)"
        with Image.open(path) as image:
            problem = _pixels_problem(*image.size)
            if problem:
                return problem.split(";")[0]
            ending = _ENDINGS.get(image.format or "")
            if ending is None or _tail(image.fp, len(ending[0])) == ending[0]:
                return None
            try:
                image.load()  # the end looks wrong: confirm by decoding (only such files are decoded)
            except (OSError, SyntaxError, ValueError) as err:
                return f"truncated: {ending[1]}, and decoding fails ({' '.join(str(err).split())})"
            return None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return "over PIL's decompression bomb limit PIL.Image.MAX_IMAGE_PIXELS"
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, Image.UnidentifiedImageError):
            return "not an image file PIL can read"
        return f"it cannot be opened: {' '.join(str(err).split()) or type(err).__name__}"


def _tail(fp: Any, size: int) -> bytes:
    position = fp.tell()
    try:
        fp.seek(-size, os.SEEK_END)
        return bytes(fp.read(size))
    finally:
        fp.seek(position)


def check_image_files(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Raise `OSError` listing every file of ``paths`` that cannot be read (`image_file_problem`).

    The message names the first few bad files relative to the folder that holds them all, counts the
    rest, and says what to do, on one line.

    Raises:
        OSError: One or more files cannot be read.
    """
    files = [Path(p) for p in paths]
    bad = [(path, problem) for path in files if (problem := image_file_problem(path)) is not None]
    if not bad:
        return
    root = Path(os.path.commonpath([str(p.parent) for p in files]))
    shown = "; ".join(f"{path.relative_to(root).as_posix()} ({problem})" for path, problem in bad[:_SHOWN])
    more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
    raise OSError(
        f"{len(bad)} of {len(files)} image files under {root} cannot be read: {shown}{more}. Remove these "
        "files, or replace them with complete copies (re-save them from the original images), then run again."
    )


def check_dataset_files(datasets: Iterable[Any]) -> None:
    """`check_image_files` over the files of folder datasets (``ClassFolder``, ``SegmentationFolder``,
    ``DetectionFolder``): every path in their ``samples``, images and masks, in one check.

    Raises:
        OSError: One or more files cannot be read; the message lists them.
    """
    paths = [
        item
        for dataset in datasets
        for sample in getattr(dataset, "samples", ())
        for item in sample
        if isinstance(item, (str, os.PathLike))
    ]
    if paths:
        check_image_files(paths)
