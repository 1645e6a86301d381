"""The saved-model format: ``model.safetensors`` (the unit) and ``config.json`` (a copy); writing it, and
reading its files back (`transferkit.models.loading` turns them into a model).

The guarantee: `load_model` always gets the weights, the config and the freeze state of one and the same
save. ``model.safetensors`` carries all three (the config and freeze state in its metadata) and is
replaced in one atomic rename (`transferkit.atomic`), and `load_model` reads it through a single open
file, so a save running meanwhile, or ``kill -9`` at any moment of one, can never pair new weights with
old class names. ``config.json`` (the `build_model` arguments, for people and tools) is written right
after; `load_model` reads it only for folders saved before the config travelled inside the weights.
Every field is checked where it is read (`check_saved_config`): a damaged or edited file is an error
that names the file, the field and the fix, and no field can make a backbone library read a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..atomic import atomic_write, write_text

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "read_json", "read_weights", "save_model"]

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_model(model: TransferModel, directory: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors`` (weights, config, freeze state) and ``config.json`` to ``directory``.

    Raises:
        FileExistsError: ``directory`` is a file, or one of the two files is a symbolic link.
    """
    from safetensors.torch import save_model as save_weights

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"cannot save the model to {directory}: it is a file; pass a folder")
    directory.mkdir(parents=True, exist_ok=True)
    config = json.dumps(model.config, indent=2, default=str) + "\n"
    metadata = {"format": "transferkit", "config": config, "freeze_state": json.dumps(model.freeze_state())}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_weights(model, p, metadata=metadata))
    write_text(directory / CONFIG_FILE, config)
    return directory


def read_json(path: Path, text: str | None = None) -> Any:
    """The JSON in ``text`` (or in the file ``path``); a ValueError naming ``path`` when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8") if text is None else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"cannot read {path}: it is not valid JSON ({err}). The file is damaged; save the model again "
            "with model.save()"
        ) from None


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], Mapping[str, str]]:
    """Every tensor and the metadata of ``path``, read in one go from one open file.

    safetensors' own readers open the file again by name for the tensors, so a save that renames a new
    file into place between the two reads would pair this file's metadata with the next one's weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    def damaged(why: str) -> ValueError:
        return ValueError(
            f"cannot read {path}: it is truncated or damaged ({why}). The file was left as it is; save the "
            "model again with model.save()"
        )

    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= len(data) - 8:
        raise damaged(f"its header claims {size} bytes, the file has {len(data)}")
    try:
        header = json.loads(data[8 : 8 + size])
        metadata = header.get("__metadata__") or {}
        tensors = load(data)
    except (SafetensorError, ValueError, AttributeError, RuntimeError) as err:
        raise damaged(" ".join(str(err).split())[:160] or type(err).__name__) from None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise damaged("its metadata is not a table of strings")
    return tensors, metadata
