"""Turning saved files into a model: `load_model` for a folder written by `TransferModel.save` or a
Hugging Face Hub repository, and `check_saved_config`, which checks every field a saved config may hold
against what `build_model` writes before anything is built (no field can make a backbone library read a
file). The file format itself is `transferkit.io.serialization`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..io.hub import download_snapshot, is_hub_spec
from ..io.serialization import CONFIG_FILE, WEIGHTS_FILE, read_json, read_weights
from ..preprocessing import resolve_data_config
from . import weights
from .arguments import check_backbone_kwargs
from .build import build_model

if TYPE_CHECKING:
    from .model import TransferModel

__all__ = ["check_saved_config", "load_model"]

MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a larger count in a file is damage, not a model
MAX_IN_CHANS = 1024
_FIELDS: dict[str, tuple[type, ...]] = {
    "backbone": (str,),
    "neck": (str,),
    "head": (str,),
    "num_classes": (int,),
    "pretrained": (bool, str, type(None)),
    "in_chans": (int,),
    "out_indices": (list, type(None)),
    "output_stride": (int, type(None)),
    "backbone_kwargs": (dict,),
    "neck_kwargs": (dict,),
    "head_kwargs": (dict,),
    "classes": (list, type(None)),
    "data_config": (dict, type(None)),
}
_REQUIRED = ("backbone", "num_classes")


def check_saved_config(config: Any, source: str) -> dict[str, Any]:
    """``config`` as `build_model` takes it, or a ValueError naming ``source``, the field and the fix.

    Only the fields `build_model` writes are accepted, each of its type and range; ``backbone_kwargs`` only
    with keys of `transferkit.models.arguments.BACKBONE_KWARGS` (none makes a library read a file).

    Examples:
        >>> check_saved_config({"backbone": "resnet18", "num_classes": 0}, "c.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: c.json: field 'num_classes' must be an int from 1 to 100000, got 0. ...
    """

    def bad(field: str, why: str) -> ValueError:
        return ValueError(
            f"{source}: field {field!r} {why}. The file is damaged or was edited; save the model again "
            "with model.save(), or correct that field"
        )

    if not isinstance(config, dict):
        raise ValueError(
            f"{source} holds a JSON {type(config).__name__}, not the object model.save() writes; save "
            "the model again with model.save()"
        )
    unknown = sorted(set(config) - set(_FIELDS))
    if unknown:
        raise bad(unknown[0], f"is not one transferkit writes (it writes {', '.join(_FIELDS)})")
    for field in _REQUIRED:
        if field not in config:
            raise bad(field, "is missing")
    for field, value in config.items():
        types = _FIELDS[field]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise bad(field, f"must be {' or '.join(t.__name__ for t in types)}, got {value!r:.80}")
    if str(config["backbone"]).startswith("<module"):
        raise ValueError(
            f"{source} describes a model with a custom backbone module, which a file cannot rebuild; build "
            "the model in Python and load the weights into it"
        )
    for field, top in (("num_classes", MAX_CLASSES), ("in_chans", MAX_IN_CHANS)):
        value = config.get(field, 1)
        if not 1 <= value <= top:
            raise bad(field, f"must be an int from 1 to {top}, got {value!r}")
    for field in ("backbone_kwargs", "neck_kwargs", "head_kwargs"):
        try:
            check_backbone_kwargs(config.get(field, {}), library=field == "backbone_kwargs")
        except ValueError as err:
            raise bad(field, str(err).removeprefix("backbone_kwargs ")) from None
    if config.get("data_config") is not None:
        try:
            resolve_data_config(config["data_config"])
        except (ValueError, TypeError) as err:
            raise bad("data_config", str(err).removeprefix("data_config ")) from None
    for field in ("out_indices", "classes"):
        items = config.get(field) or []
        kind = int if field == "out_indices" else str
        if not all(isinstance(v, kind) and not isinstance(v, bool) for v in items):
            raise bad(field, f"must be a list of {kind.__name__}s")
    return dict(config)


def load_model(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> TransferModel:
    """Load a model written by `TransferModel.save`: same architecture, weights and freeze state.

    ``directory`` may also name a Hugging Face Hub repository, ``"hf-hub:org/name"``
    (`transferkit.io.hub`).

    Raises:
        FileNotFoundError: The folder lacks ``model.safetensors`` (or, for an old save, ``config.json``).
        ValueError: A file is damaged or does not describe a model transferkit builds; the message names
            the file and the field.

    Examples:
        >>> model.save("runs/ants_bees")  # doctest: +SKIP
        >>> model = load_model("runs/ants_bees")  # doctest: +SKIP
        >>> model = load_model("hf-hub:org/ants-bees")  # doctest: +SKIP
    """
    if is_hub_spec(directory):  # the Hub's copy, or the cached one offline
        directory = download_snapshot(str(directory), weights.reachable)
    directory = Path(directory)
    weights_path, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{weights_path} not found: load_model expects a folder written by model.save() "
            f"({WEIGHTS_FILE} and {CONFIG_FILE})"
        )
    state, metadata = read_weights(weights_path)
    if "config" in metadata:
        source, config = f"{weights_path} (its config)", read_json(weights_path, metadata["config"])
    elif config_path.is_file():
        source, config = str(config_path), read_json(config_path)
    else:
        raise FileNotFoundError(
            f"{config_path} not found: load_model expects a folder written by model.save()"
        )
    config = check_saved_config(config, source)
    try:
        model = build_model(**{**config, "pretrained": False})
    except (ValueError, TypeError, NotImplementedError) as err:
        raise ValueError(f"{source} describes a model transferkit cannot build: {err}") from err
    model.config["pretrained"] = config.get("pretrained", True)
    if model.config["neck"] != config.get("neck", "identity"):  # a rule of build_model changed since
        raise ValueError(
            f"{source} was saved with neck={config.get('neck', 'identity')!r} on a backbone of one stride, "
            f"which transferkit now builds as neck={model.config['neck']!r} for the {config.get('head')!r} "
            "head (ViTs get a feature pyramid); its weights have no pyramid. Train the model again with "
            "this version, or load it with the version that saved it"
        )
    freeze = metadata.get("freeze_state")
    if freeze:  # first: LoRA adapters in it add the tensors the weights file holds for them
        try:
            model.load_freeze_state(read_json(weights_path, freeze))
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(
                f"{weights_path}: its freeze state is damaged ({err}); save the model again"
            ) from None
    _load_state(model, state, weights_path)
    return model.to(map_location)


def _load_state(model: TransferModel, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model`` exactly: every tensor present (tied ones once), each of its shape."""
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        found = (("missing", missing), ("unexpected", unexpected), ("of other shapes", wrong))
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in found if v]
        raise ValueError(
            f"{path} does not fit the model its config describes: tensors {'; '.join(parts)}. The folder "
            "is damaged or mixes two saves; save the model again with model.save()"
        )
    model.load_state_dict(state, strict=False)
