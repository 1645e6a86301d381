"""``transferkit predict``: the top classes of image files, with probabilities, from a trained run folder.

The model's task turns its outputs into one score per class and image (for segmentation: the share of
pixels predicted as each class), so every task prints the same ranked line per image; a detector prints
its boxes (class, score, ``[x1, y1, x2, y2]`` in the image's pixels; ``--score-threshold``,
``--max-detections``) and draws them over the images (``--draw``, by default ``predicted_boxes.png`` in
the run folder). ``--csv`` writes the answers as a table at full precision and ``--masks-dir`` a
segmentation model's masks (`transferkit.cli.predict_outputs`). A path that is not there, a folder
without images, an unreadable file, or one too large to read (over PIL's decompression-bomb limit, as it
is or once the model's resize has scaled it) is reported on stderr and skipped: the other files are
predicted, and the command then exits with status 1. It fails at once when no file can be read, or when
the model's outputs are not finite (its weights are damaged)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..inference import check_finite_outputs, evaluation_side, read_image
from ..models.model import TransferModel
from ..tasks import get_task
from ..training import Trainer
from ..viz.pictures import pictures
from .options import _add_device, _positive_int
from .predict_outputs import PredictionTable, mask_paths, write_mask
from .runs import _load_run, _say

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add the ``predict`` subcommand to ``commands``."""
    predict = commands.add_parser("predict", help="top classes of images with probabilities")
    predict.add_argument("--model", required=True, help="a run folder written by transferkit train")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    predict.add_argument("--top-k", type=_positive_int, default=3)
    predict.add_argument("--batch-size", type=_positive_int, default=32)
    predict.add_argument(
        "--draw", default=None, metavar="PNG", help="picture of the predicted boxes (detection models)"
    )
    predict.add_argument("--csv", default=None, metavar="FILE", help="write the answers as a CSV table")
    predict.add_argument(
        "--masks-dir", default=None, metavar="DIR", help="write each mask as DIR/<stem>.png (segmentation)"
    )
    predict.add_argument(
        "--score-threshold", type=_score, default=None, metavar="S", help="lowest box score kept (0.3)"
    )
    predict.add_argument(
        "--max-detections", type=_positive_int, default=None, metavar="N", help="most boxes per image (100)"
    )
    _add_device(predict)
    predict.set_defaults(func=_cmd_predict)


def _score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a score in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a score in [0, 1], got {value:g}")
    return value


def _image_files(paths: Sequence[str]) -> tuple[list[Path], list[tuple[Path, OSError]]]:
    """The files given, with each folder replaced by the image files under it, sorted; and the paths that
    are neither, with why."""
    files: list[Path] = []
    missing: list[tuple[Path, OSError]] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                why = f"holds no image files ({', '.join(IMAGE_SUFFIXES)})"
                missing.append((path, FileNotFoundError(why)))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            missing.append((path, FileNotFoundError("no such image file")))
    return files, missing


def _readable_batches(
    files: Sequence[Path],
    transform: Callable[[Image.Image], torch.Tensor],
    resize_side: int,
    batch_size: int,
    on_error: Callable[[Path, OSError], None] | None,
) -> Iterator[tuple[list[Path], list[Image.Image], torch.Tensor]]:
    """``(paths, images, inputs [B, C, H, W])`` of the readable files, in order; the others go to
    ``on_error``. Files that ``transform``, scaling their shorter side to ``resize_side``, would take over
    PIL's decompression-bomb limit count as unreadable (see `transferkit.inference.read_image`)."""
    for start in range(0, len(files), batch_size):
        paths, images, inputs = [], [], []
        for path in files[start : start + batch_size]:
            try:
                image = read_image(path, resize_side=resize_side)
                inputs.append(transform(image))
            except OSError as err:
                if on_error is None:
                    raise
                on_error(path, err)
                continue
            paths.append(path)
            images.append(image)
        if paths:
            yield paths, images, torch.stack(inputs)


def predict_files(
    model: TransferModel,
    meta: dict[str, Any],
    files: Sequence[Path],
    *,
    top_k: int = 3,
    batch_size: int = 32,
    device: str = "auto",
    on_error: Callable[[Path, OSError], None] | None = None,
    draw: Path | None = None,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    csv: Path | None = None,
    masks_dir: Path | None = None,
) -> list[str]:
    """One line per image: its top classes with probabilities (segmentation: predicted pixel shares;
    detection: its boxes in the image's pixels, see `transferkit.tasks.Task.describe`).

    Args:
        model: The trained model; ``model.task`` says how its outputs become class scores, and
            ``model.classes`` names them.
        meta: Its run metadata, as ``transferkit.json`` holds it; the preprocessing is the model's own
            (``model.data_config``: what it was trained at).
        files: Image paths.
        top_k: Classes per line.
        batch_size: Images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        on_error: Called with the path and the error of each unreadable (or too large) file, which is
            then skipped; None raises the first error.
        draw: Where to write a picture of the predictions over the images (detection models).
        score_threshold: Detection: the lowest box score kept (default 0.3, as ``model.predict``).
        max_detections: Detection: the most boxes kept per image (default 100).
        csv: Where to write the answers as a table, full precision (`transferkit.cli.predict_outputs`).
        masks_dir: Segmentation: where to write each mask as ``<stem>.png`` at its image's own size.

    Raises:
        OSError: A file cannot be read and ``on_error`` is None, or no file can be read at all.
        ValueError: The model's outputs are not finite (the message names the images); ``masks_dir`` for
            a model that does not segment, or for two files of one stem; detection options for a model
            that does not detect.

    Examples:
        >>> predict_files(model, meta, [Path("bee.jpg")], top_k=2)  # doctest: +SKIP
        ['bee.jpg: bees 0.968  ants 0.032']
    """
    task = get_task(model.task)
    options = task.prediction_options(score_threshold=score_threshold, max_detections=max_detections)
    if masks_dir is not None and not task.writes_masks:
        raise ValueError(f"--masks-dir writes segmentation masks; this is a {model.task} model")
    masks = mask_paths(files, masks_dir) if masks_dir is not None else {}
    table = PredictionTable(task.csv_columns) if csv is not None else None
    transform = task.image_transform(model, None)  # model.data_config: what it was trained at
    trainer = Trainer(model, device=device, progress=False)
    classes = model.classes
    lines, errors, drawn = [], [], []

    def skip(path: Path, err: OSError) -> None:  # passed on only with an on_error
        errors.append(err)
        if on_error is not None:
            on_error(path, err)

    side = evaluation_side(model)
    batches = _readable_batches(files, transform, side, batch_size, skip if on_error else None)
    for paths, images, inputs in batches:
        input_size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        outputs = trainer.predict([inputs])
        check_finite_outputs(outputs, [str(path) for path in paths])
        for path, image, output in zip(paths, images, outputs):
            size = (image.height, image.width)
            lines.append(f"{path}: {task.describe(output, classes, top_k, size, input_size, **options)}")
            if table is not None:
                table.add(path, task.rows(output, classes, top_k, size, input_size, **options))
            if draw is not None or path in masks:
                answer = task.prediction(output, classes, top_k, size, input_size, **options)
                if path in masks:
                    write_mask(answer, masks[path], len(classes))
                if draw is not None:
                    drawn.append((image, answer))
    if not lines:
        first = " ".join(str(errors[0]).split()) if errors else "no files"
        raise OSError(f"none of the {len(files)} image file(s) could be read: {first}")
    if draw is not None:
        images, answers = [image for image, _ in drawn], [answer for _, answer in drawn]
        pictures(task.name).answers(images, answers, classes, draw)
    if table is not None and csv is not None:
        table.write(csv)
    return lines


def _cmd_predict(args: argparse.Namespace) -> int:
    model, meta = _load_run(args.model)
    files, missing = _image_files(args.images)
    if not files:
        path, err = missing[0]
        more = f" (and {len(missing) - 1} more path(s) without image files)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{path}: {err}{more}")
    picture = get_task(model.task).predict_picture
    if args.draw and picture is None:
        raise ValueError(f"--draw pictures a detector's boxes; {args.model} holds a {model.task} model")
    draw = Path(args.draw) if args.draw else Path(args.model) / picture if picture else None
    failed: list[str] = []

    def report(path: Path, err: OSError) -> None:
        failed.append(f"transferkit predict: skipped {path}: {' '.join(str(err).split())}")

    for path, err in missing:
        report(path, err)
    lines = predict_files(
        model, meta, files, top_k=args.top_k, batch_size=args.batch_size, device=args.device,
        on_error=report, draw=draw, score_threshold=args.score_threshold,
        max_detections=args.max_detections, csv=Path(args.csv) if args.csv else None,
        masks_dir=Path(args.masks_dir) if args.masks_dir else None,
    )  # fmt: skip
    outputs = [f"boxes drawn in {draw}"] if draw is not None else []
    outputs += [f"table written to {args.csv}"] if args.csv else []
    outputs += [f"masks written to {args.masks_dir}"] if args.masks_dir else []
    _say(*lines, *outputs)
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed else 0
