"""The head ``transferkit train`` trains on a folder: the one given, checked against the folder's layout.

The head's task decides how ``--data`` is read, so a head of another task than the folder's layout
(`transferkit.data.kinds.folder_kinds`) would misread it: a segmentation folder without ``--head fcn``
became a classifier of "images" against "masks", with exit status 0. So a head that does not fit the
folder is refused, naming the head to pass; with ``--head`` left out, a folder that is unambiguously a
segmentation or detection folder trains that task's default head (`DEFAULT_HEADS`), and says so.
"""

from __future__ import annotations

from pathlib import Path

from ..data.kinds import describe_kinds, folder_kinds
from ..models.heads import HEADS
from .options import UsageError

__all__ = ["DEFAULT_HEADS", "head_for_data"]

# the head train picks for a folder of each task when --head is left out
DEFAULT_HEADS = {"classification": "linear", "segmentation": "fcn", "detection": "yolo"}


def _heads_of(task: str) -> list[str]:
    """``task``'s default head first, then its other registered heads."""
    others = sorted(name for name in HEADS.names() if _task_of(name) == task and name != DEFAULT_HEADS[task])
    return [DEFAULT_HEADS[task], *others]


def _task_of(head: str) -> str:
    # A head without a ``task`` attribute is a classifier, as ``TransferModel.task`` reads it too.
    return getattr(HEADS.get(head), "task", "classification")


def head_for_data(
    data: str | None, head: str | None, prog: str = "transferkit train"
) -> tuple[str, str | None]:
    """The head to train on ``data`` and a line to print about it (None when there is nothing to say).

    Args:
        data: The ``--data`` folder (None or a missing folder: nothing is checked here).
        head: The ``--head`` given, or None when it was left out.
        prog: The command, for the error.

    Returns:
        ``(head, note)``: ``head`` itself when given and it fits; with ``head`` None, the default head of
        the folder's task (``"linear"`` when the layout is not known), and a note when that is not linear.

    Raises:
        UsageError: The head's task is not the folder's (or, with ``head`` None, the folder has both the
            segmentation and the detection layout); the message names the head to pass.

    Examples:
        >>> head_for_data(None, None)
        ('linear', None)
    """
    kinds = folder_kinds(data) if data is not None and Path(data).is_dir() else []
    tasks = [kind.task for kind in kinds]
    if head is not None:
        task = _task_of(head)  # an unknown head raises here, with the closest names
        if not kinds or task in tasks:
            return head, None
        raise UsageError(
            prog,
            f"--data {data} looks like {describe_kinds(kinds)}, which --head {head} ({task}) does not read: "
            f"pass {_suggest(tasks)}",
        )
    if len(kinds) > 1:
        raise UsageError(prog, f"--data {data} looks like {describe_kinds(kinds)}: pass {_suggest(tasks)}")
    if not kinds or tasks == ["classification"]:
        return DEFAULT_HEADS["classification"], None
    chosen = DEFAULT_HEADS[tasks[0]]
    note = (
        f"--data looks like {describe_kinds(kinds)}: training the {chosen} head, the {tasks[0]} default "
        f"(pass --head to choose another: {', '.join(_heads_of(tasks[0]))})"
    )
    return chosen, note


def _suggest(tasks: list[str]) -> str:
    """``--head fcn (or deeplabv3plus) for segmentation``, joined with ", or" for several tasks."""
    parts = []
    for task in tasks:
        first, *others = _heads_of(task)
        parts.append(f"--head {first}" + (f" (or {', '.join(others)})" if others else "") + f" for {task}")
    return ", or ".join(parts)
