"""Sharing models through the Hugging Face Hub: the saved folder plus a generated model card.

A Hub repository holds exactly what `TransferModel.save` writes (``config.json`` and
``model.safetensors``) and a ``README.md`` model card (backbone, task, classes, input size, mean and
std, and a training summary when a history is given). ``load_model("hf-hub:org/name")`` downloads it
through huggingface_hub into its cache; offline (``HF_HUB_OFFLINE=1``, or no route to the Hub) the
cached copy is used, and a repository that was never downloaded is an error that says so.

Examples:
    >>> model.push_to_hub("me/ants-bees-resnet18", history=history)  # doctest: +SKIP
    'https://huggingface.co/me/ants-bees-resnet18'
    >>> model = load_model("hf-hub:me/ants-bees-resnet18")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from ..models.model import TransferModel

__all__ = ["HUB_PREFIX", "download_snapshot", "is_hub_spec", "model_card", "push_to_hub"]

HUB_PREFIX = "hf-hub:"
_PIPELINES = {"classification": "image-classification", "segmentation": "image-segmentation"}


def model_card(model: TransferModel, history: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The ``README.md`` text of a Hub repository for ``model``.

    Examples:
        >>> card = model_card(build_model("resnet18", num_classes=2, pretrained=False))
        >>> card.splitlines()[1]
        'library_name: transferkit'
    """
    from .export_spec import describe_preprocessing, preprocessing_spec

    config, data = model.config, model.data_config
    classes = list(getattr(model, "classes", None) or [str(i) for i in range(model.num_classes)])
    meta: dict[str, Any] = {"library_name": "transferkit", "tags": ["transferkit", "transfer-learning"]}
    if model.task in _PIPELINES:
        meta["pipeline_tag"] = _PIPELINES[model.task]
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {config.get('backbone')} + {config.get('neck')} + {config.get('head')} ({model.task})",
        "",
        "A [transferkit](https://pypi.org/project/transferkit/) model. Load it with:",
        "",
        "```python",
        "from transferkit import load_model",
        "",
        'model = load_model("hf-hub:REPO_ID")',
        "```",
        "",
        "| | |",
        "| --- | --- |",
        f"| backbone | `{config.get('backbone')}` |",
        f"| neck, head | `{config.get('neck')}`, `{config.get('head')}` |",
        f"| task | {model.task} |",
        f"| classes ({len(classes)}) | {', '.join(classes)} |",
        f"| input size | {' x '.join(map(str, data['input_size']))} (channels, height, width) |",
        f"| mean | {', '.join(f'{v:.4f}' for v in data['mean'])} |",
        f"| std | {', '.join(f'{v:.4f}' for v in data['std'])} |",
        f"| interpolation | {data.get('interpolation', 'bilinear')} |",
        f"| preprocessing | {describe_preprocessing(preprocessing_spec(model))} |",
    ]
    if history:
        lines += ["", "## Training", "", *_history_lines(history)]
    return "\n".join(lines) + "\n"


def _history_lines(history: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = [k for k in history[-1] if k.startswith(("train_", "val_"))]
    lines = [f"{len(history)} epochs; the last:", "", "| epoch | " + " | ".join(keys) + " |"]
    lines.append("| --- |" + " --- |" * len(keys))
    last = history[-1]
    values = " | ".join(f"{last[k]:.4f}" if isinstance(last[k], float) else str(last[k]) for k in keys)
    lines.append(f"| {int(last.get('epoch', len(history) - 1)) + 1} | {values} |")
    return lines


def push_to_hub(
    model: TransferModel,
    repo_id: str,
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload transferkit model",
) -> str:
    """Uploads the saved model and its card to the Hub repository ``repo_id`` (created if missing).

    Args:
        model: The model.
        repo_id: ``"org/name"``.
        history: ``Trainer.fit``'s history, summarised in the card.
        private: Create the repository as private.
        token: A Hub token (default: the logged-in one).
        commit_message: The commit's message.

    Returns:
        The repository's URL.

    Raises:
        ValueError: ``repo_id`` is not ``"org/name"``.
    """
    from huggingface_hub import HfApi

    _check_repo_id(repo_id)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="transferkit-hub-") as folder:
        model.save(folder)
        card = model_card(model, history).replace("REPO_ID", repo_id)
        (Path(folder) / "README.md").write_text(card)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    return str(url)


def download_snapshot(spec: str, reachable: Callable[[str], bool]) -> Path:
    """The local folder of ``"hf-hub:org/name[@revision]"``: downloaded, or from the Hub cache when offline
    (``HF_HUB_OFFLINE``, or ``reachable(endpoint)`` False).

    Raises:
        FileNotFoundError: Offline and the repository is not in the cache (the message names the cache).
    """
    from huggingface_hub import constants, snapshot_download

    repo_id, _, revision = spec.removeprefix(HUB_PREFIX).partition("@")
    _check_repo_id(repo_id)
    offline = constants.HF_HUB_OFFLINE or not reachable(constants.ENDPOINT)
    files = ["config.json", "model.safetensors", "README.md"]
    try:
        folder = snapshot_download(
            repo_id, revision=revision or None, allow_patterns=files, local_files_only=offline
        )
    except Exception as err:  # huggingface_hub raises its own errors for every network and cache miss
        where = f"the Hugging Face cache ({constants.HF_HUB_CACHE})"
        reason = "there is no network and it is not in " + where if offline else f"download failed: {err}"
        raise FileNotFoundError(
            f"cannot load {spec}: {reason}. Download it once with network, or save the model with "
            "model.save(DIR) and load_model(DIR)."
        ) from err
    return Path(folder)


def is_hub_spec(location: str | os.PathLike[str]) -> bool:
    """Whether a `load_model` location names a Hub repository."""
    return isinstance(location, str) and location.startswith(HUB_PREFIX)


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a Hub repository is named 'org/name', got {repo_id!r}")
