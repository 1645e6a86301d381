"""Saving and loading a TransferModel: ``config.json`` (the `build_model` arguments) + ``model.safetensors``.

Both files are written atomically (a temporary file, then a rename), so a crash never leaves half a
file; the safetensors metadata carries the freeze state.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .model import TransferModel

__all__ = ["load_model", "save_model"]


def save_model(model: TransferModel, directory: str | os.PathLike[str]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (weights and freeze state) to ``directory``."""
    from safetensors.torch import save_model as save_weights

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"freeze_state": json.dumps(model.freeze_state())}
    _atomic_write(directory / "model.safetensors", lambda p: save_weights(model, p, metadata=metadata))
    text = json.dumps(model.config, indent=2, default=str) + "\n"
    _atomic_write(directory / "config.json", lambda p: Path(p).write_text(text))
    return directory


def _atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_model(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> TransferModel:
    """Load a model written by `TransferModel.save`: same architecture, weights and freeze state.

    ``directory`` may also name a Hugging Face Hub repository, ``"hf-hub:org/name"`` (see `transferkit.hub`).

    Examples:
        >>> model.save("runs/ants_bees")  # doctest: +SKIP
        >>> model = load_model("runs/ants_bees")  # doctest: +SKIP
        >>> model = load_model("hf-hub:org/ants-bees")  # doctest: +SKIP
    """
    from .hub import is_hub_spec, load_from_hub

    if is_hub_spec(directory):
        return load_from_hub(str(directory), map_location=map_location)
    from safetensors import safe_open
    from safetensors.torch import load_model as load_weights

    from .model import build_model  # model.py imports this module

    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: load_model expects a directory written by model.save()"
            )
    config = json.loads(config_path.read_text())
    if str(config.get("backbone", "")).startswith("<module"):
        raise ValueError(
            f"{directory} holds a model with a custom backbone module; rebuild it and load the weights"
        )
    model = build_model(**{**config, "pretrained": False})
    model.config["pretrained"] = config["pretrained"]
    load_weights(model, str(weights_path), strict=True, device=str(map_location))
    with safe_open(str(weights_path), framework="pt") as f:
        freeze = (f.metadata() or {}).get("freeze_state")
    if freeze:
        model.load_freeze_state(json.loads(freeze))
    return model
