"""Class-activation maps: where in an image a classifier finds a class, computed by the ``grad-cam`` package.

`activation_maps` hands a model, its target layer and the classes to explain to ``pytorch_grad_cam`` (the
``gradcam`` extra: ``pip install "transferkit[gradcam]"``) and returns one map per image at the input's
size. The target layer defaults to the backbone's last block (`TransferModel.blocks`); a ViT block's token
sequence ``[N, prefix + H*W, C]`` is turned into a ``[N, C, H, W]`` grid without its class token and
registers. The model is given back exactly as it came: train / eval mode of every module, every
parameter's ``requires_grad`` and ``.grad``, and no hook left behind.

`show_top_losses` draws an interpretation's top losses, each image re-read from the loader's dataset
by its index, with its map overlaid.

Examples:
    >>> maps = activation_maps(model, images)  # doctest: +SKIP
    >>> images.shape, maps.shape  # doctest: +SKIP
    (torch.Size([4, 3, 64, 64]), torch.Size([4, 64, 64]))
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..models.freeze import block_modules
from ..viz.heatmaps import draw_heatmaps
from ..viz.plots import display_images, require_matplotlib, save_figure
from .classification import ClassificationInterpretation
from .stream import Reread

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CAM_METHODS", "activation_maps", "show_top_losses"]

CAM_METHODS = {
    "gradcam": "GradCAM",
    "hirescam": "HiResCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
}
"""The ``method`` names `activation_maps` takes, with the ``pytorch_grad_cam`` class each one uses.

``eigencam`` needs no gradients and ignores ``targets``; ``scorecam`` runs the model once per channel of
the target layer (slow, with a progress bar).

Examples:
    >>> CAM_METHODS["gradcam"], "hirescam" in CAM_METHODS
    ('GradCAM', True)
"""

INSTALL_HINT = 'pip install "transferkit[gradcam]"'


def _grad_cam(module: str = "pytorch_grad_cam") -> Any:
    """A module of the grad-cam package (untyped, so ``Any``), or an ImportError that names the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"activation maps need the grad-cam package, which is not installed: {INSTALL_HINT}"
        ) from err


def activation_maps(
    model: nn.Module,
    images: Tensor,
    targets: int | Sequence[int] | Tensor | None = None,
    *,
    layer: int | nn.Module | None = None,
    method: str = "gradcam",
) -> Tensor:
    """Class-activation maps of ``images`` for the classes ``targets``, from the ``grad-cam`` package.

    Gradients flow to the layer's activations through the input, never into parameters, so a fully
    frozen model works and its ``.grad`` stays as it was. The model runs in eval mode on its own device;
    afterwards every module's mode, every parameter's ``requires_grad`` and ``.grad`` are as before and
    no hook is left.

    Args:
        model: A classifier (logits ``[N, K]``), normally a classification `TransferModel`.
        images: ``[N, C, H, W]``, preprocessed as the model expects (what its loaders yield).
        targets: The class to explain for each image (an index, or one per image); None: the predicted.
        layer: The layer whose activations are weighed: an index into ``model.blocks`` (``-1``, the
            default, is the backbone's last block) or a module of ``model``. Token sequences
            ``[N, prefix + H*W, C]`` (a ViT's blocks) are reshaped to their patch grid.
        method: A name in `CAM_METHODS` (``"gradcam"``, ``"hirescam"``, ``"eigencam"``, ...).

    Returns:
        ``[N, H, W]`` float32 maps on the CPU, each scaled to [0, 1] (1 where the evidence is strongest).

    Raises:
        ImportError: grad-cam is not installed (the message gives ``pip install "transferkit[gradcam]"``).
        ValueError: Images not ``[N, C, H, W]``, a target or block index out of range, a module that is
            not part of ``model``, an unknown ``method``, a non-classification model, or a layer whose
            output does not reach the class scores.

    Examples:
        >>> model = build_model("resnet18", num_classes=2, pretrained=False)  # doctest: +SKIP
        >>> maps = activation_maps(model, torch.randn(4, 3, 64, 64), targets=1)  # doctest: +SKIP
        >>> maps.shape, 0 <= float(maps.min()), float(maps.max()) <= 1  # doctest: +SKIP
        (torch.Size([4, 64, 64]), True, True)
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"activation_maps needs images [N, C, H, W] with N >= 1, got {shape}")
    if getattr(model, "task", "classification") != "classification":
        raise ValueError(f"activation maps explain classifiers; this model's task is {model.task!r}")
    cam_class = getattr(_grad_cam(), _method_class(method))
    candidates, what = _layer_modules(model, layer)
    chosen = _class_indices(targets, len(images), getattr(model, "num_classes", None))
    param = next(model.parameters(), None)
    inputs = images.detach().to(param.device if param is not None else "cpu")
    if param is not None and param.is_floating_point():
        inputs = inputs.to(param.dtype)
    with _model_kept(model), torch.enable_grad():
        model.eval()
        source, call = _last_output(model, candidates, inputs[:1], what)
        with _tapped(model, source, call) as tap:
            cam = cam_class(model=model, target_layers=[tap], reshape_transform=_token_grid(model, inputs))
            try:
                maps = _run(cam, inputs.requires_grad_(True), chosen, what)
            finally:
                cam.activations_and_grads.release()
    return torch.from_numpy(maps).float().clamp_(0, 1)


def _run(cam: Any, inputs: Tensor, chosen: list[int] | None, what: str) -> Any:
    """Call the CAM object; its failure when the layer got no gradient, said plainly."""
    output_target = _grad_cam("pytorch_grad_cam.utils.model_targets").ClassifierOutputTarget
    targets = None if chosen is None else [output_target(k) for k in chosen]
    try:
        return cam(input_tensor=inputs, targets=targets)
    except (TypeError, ValueError, IndexError, AttributeError) as err:
        if cam.uses_gradients and not cam.activations_and_grads.gradients:
            raise ValueError(
                f"the output of {what} does not reach the class scores, so it has no gradient; pick a "
                "layer the head reads (layer=-1, the backbone's last block)"
            ) from err
        raise


def _method_class(method: str) -> str:
    if method not in CAM_METHODS:
        close = difflib.get_close_matches(str(method), list(CAM_METHODS), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown CAM method {method!r}{hint} (choose from {', '.join(CAM_METHODS)})")
    return CAM_METHODS[method]


def _class_indices(
    targets: int | Sequence[int] | Tensor | None, n: int, num_classes: int | None
) -> list[int] | None:
    """One class index per image (an int repeated), checked against the class count; None stays None."""
    if targets is None:
        return None
    if isinstance(targets, Tensor):
        if targets.is_floating_point():
            raise ValueError("targets must be class indices (ints), not a float tensor")
        targets = targets.flatten().tolist()
    chosen = [int(targets)] * n if isinstance(targets, int) else [int(k) for k in targets]
    if len(chosen) != n:
        raise ValueError(f"targets has {len(chosen)} classes for {n} images; give one per image or one int")
    bad = [k for k in chosen if k < 0 or (num_classes is not None and k >= num_classes)]
    if bad:
        raise ValueError(f"targets {bad} are out of range: classes are 0..{(num_classes or 1) - 1}")
    return chosen


def _layer_modules(model: nn.Module, layer: int | nn.Module | None) -> tuple[list[nn.Module], str]:
    """The modules whose last output is the layer's (``model.blocks[layer]``'s, default -1: the last
    block; or ``layer`` itself when it is a module of ``model``), and the layer's name for messages."""
    if isinstance(layer, nn.Module):
        if not any(module is layer for module in model.modules()):
            raise ValueError(
                f"layer {type(layer).__name__} is not a module of this model; pass one of its modules"
            )
        return [layer], f"layer {type(layer).__name__}"
    backbone = getattr(model, "backbone", None)
    blocks = getattr(backbone, "blocks", None)
    if backbone is None or not isinstance(blocks, dict) or not blocks:
        raise ValueError(
            "this model has no backbone blocks (build it with build_model); pass layer=<a module>"
        )
    index = -1 if layer is None else layer
    if isinstance(index, bool) or not isinstance(index, int) or not -len(blocks) <= index < len(blocks):
        raise ValueError(f"layer={layer!r} is not a block index in [{-len(blocks)}, {len(blocks) - 1}]")
    name = list(blocks)[index]
    return block_modules(backbone, blocks)[name], f"block {name!r}"


def _last_output(
    model: nn.Module, modules: list[nn.Module], image: Tensor, what: str
) -> tuple[nn.Module, int]:
    """Which of ``modules`` gives the layer's output, and on which call of a forward pass (1-based).

    One pass over ``image`` records the order the modules return in; the last to return holds the
    layer's output. That is the block module itself where it runs as a whole (a timm block), and its
    last operation where the backbone is a torch.fx graph that calls only the leaves (torchvision's
    feature extractors), whose shared ReLU runs twice per residual block.
    """
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, _, __: order.append(m)) for m in modules]
    try:
        with torch.no_grad():
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise ValueError(f"{what} did not run in the model's forward pass; pass a layer the model uses")
    return order[-1], sum(1 for m in order if m is order[-1])


@contextlib.contextmanager
def _tapped(model: nn.Module, source: nn.Module, call: int) -> Iterator[nn.Module]:
    """An ``nn.Identity`` (outside the model) that the ``call``-th output of ``source`` in each forward pass
    goes through: a module whose one call is exactly the layer's output, for grad-cam to hook."""
    tap, calls = nn.Identity(), [0]

    def restart(*_: Any) -> None:
        calls[0] = 0

    def route(_: nn.Module, __: Any, output: Any) -> Any:
        calls[0] += 1
        return tap(output) if calls[0] == call else None

    handles = [model.register_forward_pre_hook(restart), source.register_forward_hook(route)]
    try:
        yield tap
    finally:
        for handle in handles:
            handle.remove()


def _token_grid(model: nn.Module, inputs: Tensor) -> Callable[[Tensor], Tensor]:
    """grad-cam's ``reshape_transform``: any activation as ``[N, C, h, w]``. Tokens ``[N, prefix + h*w, C]``
    lose the prefix (class token, registers: timm's ``num_prefix_tokens``) and are laid on their grid;
    maps of a timm model whose ``output_fmt`` is ``NHWC`` (Swin) are put channels first."""
    counts = [getattr(m, "num_prefix_tokens", None) for m in model.modules()]
    prefix = next((int(count) for count in counts if isinstance(count, int)), 0)
    formats = [str(m.output_fmt) for m in model.modules() if hasattr(m, "output_fmt")]
    channels_last = bool(formats) and formats[0].endswith("NHWC")  # the outermost says how maps are laid
    height, width = inputs.shape[-2:]

    def to_grid(x: Tensor) -> Tensor:
        if x.ndim == 4:
            return x.permute(0, 3, 1, 2) if channels_last else x
        if x.ndim != 3:
            return x
        for skip in dict.fromkeys((prefix, 0)):  # a block's tokens carry the prefix; the patch stem's do not
            grid = _grid_shape(x.shape[1] - skip, height, width)
            if grid is not None:
                return x[:, skip:].reshape(x.shape[0], *grid, x.shape[2]).permute(0, 3, 1, 2)
        raise ValueError(
            f"cannot lay {x.shape[1]} tokens ({prefix} prefix) on a grid of the input's {height}x{width} "
            "shape; pass a layer whose output is a feature map [N, C, H, W] or a ViT block's tokens"
        )

    return to_grid


def _grid_shape(tokens: int, height: int, width: int) -> tuple[int, int] | None:
    """``(rows, columns)`` of ``tokens`` patches laid out with the input's aspect ratio, or None."""
    if tokens < 1:
        return None
    rows = max(1, round(math.sqrt(tokens * height / width)))
    columns = tokens // rows
    if rows * columns != tokens or abs(height / rows - width / columns) > 0.25 * max(
        height / rows, width / columns
    ):
        return None
    return rows, columns


@contextlib.contextmanager
def _model_kept(model: nn.Module) -> Iterator[None]:
    """Freeze every parameter for the duration (gradients then reach activations only) and give back each
    module's train / eval mode and each parameter's ``requires_grad`` and ``.grad`` as they were."""
    modes = [(module, module.training) for module in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        for p, _, _ in params:
            p.requires_grad_(False)
        yield
    finally:
        for module, training in modes:
            module.training = training
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad


def show_top_losses(
    interp: ClassificationInterpretation,
    model: nn.Module,
    loader: Any,
    k: int = 8,
    *,
    cam: bool = True,
    for_class: str = "predicted",
    method: str = "gradcam",
    layer: int | nn.Module | None = None,
    columns: int = 4,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """The ``k`` top losses of ``interp``, each with its class-activation map overlaid.

    Only those ``k`` images are read again, from ``loader``'s dataset by their index, so memory does not
    grow with the dataset. Titles read ``true -> predicted`` (red when wrong), the loss and the probability of
    the predicted class. Images are shown un-normalised with the loader's declared preprocessing, else
    the model's.

    Args:
        interp: What `interpret` returned for ``model`` and ``loader``.
        model: The classifier that was interpreted.
        loader: The loader ``interp`` came from: a `DataLoader` that reads its dataset in order.
        k: How many of the top losses to draw.
        cam: False draws the images without maps (grad-cam is then not needed).
        for_class: ``"predicted"`` (where the model saw its answer) or ``"true"`` (where it saw the truth).
        method: A name in `CAM_METHODS`.
        layer: As for `activation_maps`.
        columns: Panels per row.
        path: Where to write the PNG (parent folders are created); None only returns the figure.

    Returns:
        The matplotlib ``Figure``, one panel per image.

    Raises:
        ValueError: ``k`` < 1, a loader that does not read its dataset in order (shuffled, dropping its
            last batch), an unknown ``for_class`` or ``method``.
        ImportError: ``cam=True`` without grad-cam (the message gives the install command).

    Examples:
        >>> interp = interpret(model, loaders["val"])  # doctest: +SKIP
        >>> fig = show_top_losses(interp, model, loaders["val"], k=8, path="top_losses.png")  # doctest: +SKIP
        >>> len(fig.axes)  # doctest: +SKIP
        8
    """
    if k < 1 or columns < 1:
        raise ValueError(f"k and columns must be >= 1, got {k} and {columns}")
    if for_class not in ("predicted", "true"):
        raise ValueError(f"for_class must be 'predicted' or 'true', got {for_class!r}")
    require_matplotlib()
    samples = interp.top_losses(k)
    images = Reread(loader, len(interp)).batch([s.index for s in samples], "show_top_losses()")[0]
    maps = None
    if cam:
        explained = interp.predictions if for_class == "predicted" else interp.targets
        maps = activation_maps(
            model, images, explained[[s.index for s in samples]], layer=layer, method=method
        )
    titles = [f"{s.true} \u2192 {s.predicted}\nloss {s.loss:.2f}, p {s.probability:.2f}" for s in samples]
    wrong = [s.true != s.predicted for s in samples]
    shown = "map of the predicted class" if for_class == "predicted" else "map of the true class"
    fig = draw_heatmaps(
        display_images(images, model, loader),
        None if maps is None else maps.numpy(),
        titles,
        wrong=wrong,
        columns=columns,
        title=f"top {len(samples)} losses: true \u2192 predicted" + (f" ({method} {shown})" if cam else ""),
    )
    save_figure(fig, path)
    return fig
