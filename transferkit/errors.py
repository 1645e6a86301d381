"""Every public exception of transferkit, each importable from ``transferkit``.

Each subclasses the built-in exception a caller would catch without knowing transferkit (``ValueError``
for input that does not fit, ``RuntimeError`` for what cannot be done here and now), and its message says
what was wrong and what to do.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ExportError",
    "PretrainedUnavailableError",
    "UnknownNameError",
    "WeightsMismatchError",
]


class UnknownNameError(ValueError, KeyError):
    """Raised for a name that is not registered; the message names the closest matches.

    Examples:
        >>> try:
        ...     build_model("resnet181", num_classes=2, pretrained=False)
        ... except UnknownNameError as error:
        ...     print(str(error).split(". ")[0])
        Unknown backbone 'resnet181'
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable (typically: no network).

    The message names the file to place and where, and the ``pretrained=PATH`` alternative.

    Examples:
        >>> try:  # doctest: +SKIP
        ...     build_model("resnet18", num_classes=2, pretrained=True)  # offline, nothing cached
        ... except PretrainedUnavailableError as error:
        ...     print(error)
        Cannot download pretrained weights for torchvision/resnet18 from
        https://download.pytorch.org/models/resnet18-f37072fd.pth: no network. To use pretrained weights
        for torchvision/resnet18 without network, place the weights file at
        ~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth, ...
    """


class WeightsMismatchError(ValueError):
    """A weights file does not fit the model it is loaded into; the message counts and names the keys.

    Examples:
        >>> import tempfile, torchvision
        >>> path = f"{tempfile.mkdtemp()}/resnet34.pth"
        >>> torch.save(torchvision.models.resnet34().state_dict(), path)
        >>> try:
        ...     build_model("resnet18", num_classes=2, pretrained=path)
        ... except WeightsMismatchError as error:
        ...     print(error)
        weights for torchvision/resnet18 (.../resnet34.pth) does not fit this model: 0 missing keys [],
        96 unexpected keys ['layer1.2.conv1.weight', ...] .... The file must hold the state_dict of the
        same architecture (classifier keys are ignored).
    """


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: damaged, not a checkpoint, or written for another model.

    The message names the file and what to do; the file and the training state are left unchanged.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "last.pt").write_bytes(b"not a checkpoint")
        >>> model = build_model("resnet18", num_classes=2, pretrained=False)
        >>> data = TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1]))
        >>> loader = DataLoader(data, batch_size=2)
        >>> try:
        ...     Trainer(model, checkpoint_dir=folder, resume=True, progress=False).fit(loader)
        ... except CheckpointError as error:
        ...     print(str(error).split(":")[1].strip())
        the file is truncated or damaged (not a checkpoint's bytes). The file was left as it is; move it
        away (or delete it) to start afresh, or point checkpoint_dir= at this model's own run.
    """


class ExportError(RuntimeError):
    """An exporter could not convert the model; the message names the format and the alternatives.

    The file a failed export would have replaced is left as it was.

    Examples:
        >>> try:  # doctest: +SKIP
        ...     model.export("model.onnx")
        ... except ExportError as error:
        ...     print(error)  # the format, what failed, and the formats to try instead
    """
