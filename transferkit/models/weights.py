"""Resolving ``pretrained=``: hub downloads with a fast offline error, local files, safe loading."""

from __future__ import annotations

import os
import pickle
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import PretrainedUnavailableError, WeightsMismatchError
from .input_channels import adapt_input_conv

__all__ = [
    "PretrainedUnavailableError",
    "WeightsMismatchError",
    "read_state_dict",
    "load_matching",
    "fetch_url",
    "fetch_hf",
    "refused_objects",
]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_CONNECT_TIMEOUT_S = 5.0


def _ways_out(model: str, where: str) -> str:
    return (
        f"To use pretrained weights for {model} without network, place the weights file at {where}, "
        f"or pass pretrained='/path/to/weights.safetensors' (a state_dict of the original model, "
        f".safetensors/.pth/.pt); or pass pretrained=False to start from random weights."
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` without unpickling code.

    A checkpoint that wraps the state_dict under ``"state_dict"``, ``"model"`` or ``"state_dict_ema"``
    is unwrapped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, a truncated or damaged file (a safetensors header that lies about
            its tensors included), or a pickle that holds code (refused, never executed); the message
            names the file, which is left as it is.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise ValueError(_damaged(path, err)) from None
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"weights file {str(path)!r} has suffix {path.suffix!r}; "
            f"expected one of {', '.join(WEIGHT_SUFFIXES)}"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not refused_objects(err, path):
            raise ValueError(_damaged(path, err)) from None
        # torch's message advises turning weights_only off, which would run whatever code the file holds
        raise ValueError(
            f"refusing to load {str(path)!r}: it is not a plain state_dict (it holds objects other than "
            f"tensors and plain data, whose loading could run code from the file; nothing in it was run). "
            f"Save weights with torch.save(model.state_dict(), path) or as .safetensors."
        ) from None
    except Exception as err:  # random bytes fail deep in the unpickler (IndexError, EOFError, ...)
        raise ValueError(_damaged(path, err)) from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state_dict (a dict of tensor names to tensors)")
    return state


def refused_objects(err: pickle.UnpicklingError, path: Path) -> bool:
    """Whether torch's weights-only unpickler refused what ``path`` holds (a class, a call, or opcodes of a
    pickle protocol it does not read), rather than bytes that are no pickle at all (damage).

    A file torch wrote is a zip archive (``PK``); a plain pickle starts with its protocol opcode (``0x80``).
    Anything else that fails as unknown opcodes is damaged bytes."""
    text = str(err)
    if "Unsupported operand" not in text and "String is too long" not in text:
        return True
    with open(path, "rb") as file:
        head = file.read(2)
    return head == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def _damaged(path: Path, err: Exception) -> str:
    detail = " ".join(str(err).split()).split(". ")[0][:120]  # torch's first sentence says what broke
    return (
        f"cannot read weights file {str(path)!r}: it is truncated or damaged ({type(err).__name__}"
        f"{': ' + detail if detail else ''}). The file was left as it is; download or save it again."
    )


def load_matching(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    rename: Callable[[str], str | None] = lambda k: k,
    ignore: Iterable[str] = (),
    input_convs: Iterable[str] = (),
) -> None:
    """Load ``state`` into ``module`` strictly, after renaming keys and dropping ignored ones.

    Args:
        module: Receives the weights.
        state: The file's state_dict, with the original model's key names.
        source: What the weights are (for messages).
        rename: Maps an original key to its key in ``module``; None for a key of the original model that
            ``module`` does not use (the parts a feature extractor leaves out).
        ignore: Key prefixes the file may hold that ``module`` does not need (the classifier).
        input_convs: Keys of ``module`` (after renaming) holding a first convolution's kernel; one with
            other input channels than ``module``'s is adapted (`transferkit.models.input_channels`).

    Raises:
        WeightsMismatchError: naming the missing and unexpected keys, or the mismatched shapes.
    """
    ignore = tuple(ignore)
    target = module.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected, skipped = [], []
    for key, value in state.items():
        new = rename(key)
        if new is None:
            skipped.append(key)
            continue
        if new in target:
            mapped[new] = value
        elif not key.startswith(ignore):
            unexpected.append(key)
    for key in set(input_convs) & set(mapped):
        have, want = mapped[key].shape, target[key].shape
        if len(have) == len(want) == 4 and (have[0], *have[2:]) == (want[0], *want[2:]):
            mapped[key] = adapt_input_conv(mapped[key], want[1])
    missing = [k for k in target if k not in mapped]
    if missing or unexpected:
        # a file of another architecture has its keys skipped as parts this model does not use; name them
        other = f", {len(skipped)} keys skipped as unused {_preview(skipped)}" if missing and skipped else ""
        raise WeightsMismatchError(
            f"{source} does not fit this model: {len(missing)} missing keys {_preview(missing)}, "
            f"{len(unexpected)} unexpected keys {_preview(unexpected)}{other}. The file must hold the "
            f"state_dict of the same architecture (classifier keys are ignored)."
        )
    wrong = [
        (k, tuple(v.shape), tuple(target[k].shape)) for k, v in mapped.items() if v.shape != target[k].shape
    ]
    if wrong:
        k, got, want = wrong[0]
        raise WeightsMismatchError(
            f"{source} does not fit this model: {len(wrong)} tensors have other shapes, "
            f"e.g. {k!r} is {got} in "
            f"the file but {want} in the model. Another model variant? Build the model the weights were made "
            f"for, or use pretrained=False."
        )
    module.load_state_dict(mapped, strict=True)


def _preview(keys: list[str]) -> str:
    return f"{keys[:4]}{' ...' if len(keys) > 4 else ''}"


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def reachable(url: str) -> bool:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=_CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def fetch_url(url: str, *, model: str, progress: bool = True) -> Path:
    """Path of the weights at ``url`` in the torch hub cache, downloading them when absent."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if cache.is_file():
        return cache
    if not reachable(url):
        raise PretrainedUnavailableError(
            f"Cannot download pretrained weights for {model} from {url}: no network. "
            + _ways_out(model, str(cache))
        )
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(60):
            torch.hub.download_url_to_file(url, str(cache), progress=progress)
    except Exception as err:
        raise PretrainedUnavailableError(
            f"Downloading pretrained weights for {model} from {url} failed ({err}). "
            + _ways_out(model, str(cache))
        ) from err
    return cache


def fetch_hf(
    repo_id: str, *, model: str, filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
) -> Path:
    """Path of a Hugging Face Hub weights file in the local cache, downloading it when absent."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return Path(cached)
    where = f"the Hugging Face cache ({constants.HF_HUB_CACHE}) as repo {repo_id!r}"
    if constants.HF_HUB_OFFLINE or not reachable(constants.ENDPOINT):
        raise PretrainedUnavailableError(
            f"Cannot download pretrained weights for {model} from the Hugging Face Hub ({repo_id}): "
            "no network. " + _ways_out(model, where)
        )
    errors = []
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except Exception as err:  # the next file name may exist
            errors.append(f"{filename}: {err}")
    raise PretrainedUnavailableError(
        f"Downloading pretrained weights for {model} from {repo_id} failed ({'; '.join(errors)}). "
        + _ways_out(model, where)
    )


def is_weights_path(pretrained: Any) -> TypeGuard[str | os.PathLike[str]]:
    """Whether ``pretrained`` names a local weights file rather than a tag."""
    if isinstance(pretrained, os.PathLike):
        return True
    return isinstance(pretrained, str) and (
        pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained or Path(pretrained).is_file()
    )
