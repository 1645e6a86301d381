"""plots: history curves with unfreezing marks, and prediction grids for classification and segmentation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from transferkit.viz import plot_history, show_predictions

PNG = b"\x89PNG\r\n\x1a\n"
HALF = {"input_size": (3, 8, 8), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _history(blocks: list[int]) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            "train_loss": 1.0 / (e + 1),
            "val_loss": 1.2 / (e + 1),
            "val_acc": 0.4 + 0.1 * e,
            "trainable_blocks": b,
            "lr": 1e-3,
        }  # fmt: skip
        for e, b in enumerate(blocks)
    ]


def _vertical_lines(ax) -> list[float]:
    """x of the dashed vertical lines (the unfreezing marks)."""
    marks = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert all(len(set(line.get_xdata())) == 1 for line in marks)
    return sorted(float(line.get_xdata()[0]) for line in marks)


def test_plot_history_draws_curves_and_marks_unfreezing(tmp_path: Path) -> None:
    history = _history([2, 2, 4, 4, 6])
    path = tmp_path / "nested" / "history.png"
    fig = plot_history(history, path)
    assert path.read_bytes().startswith(PNG)
    loss_ax, metric_ax = fig.axes
    curves = {
        line.get_label(): line for ax in fig.axes for line in ax.lines if not line.get_label().startswith("_")
    }
    assert {"train_loss", "val_loss", "val_acc"} <= set(curves)
    assert list(curves["val_loss"].get_xdata()) == [1, 2, 3, 4, 5]  # epochs shown 1-based, like the bar
    assert list(curves["train_loss"].get_ydata()) == [row["train_loss"] for row in history]
    # blocks grew at epochs 3 and 5 (1-based): lines just before them, on both panels, with the counts
    for ax in (loss_ax, metric_ax):
        assert _vertical_lines(ax) == [2.5, 4.5]
        texts = [t.get_text().strip() for t in ax.texts]
        assert "2\u21924 blocks" in texts and "4\u21926 blocks" in texts
    assert metric_ax.get_ylim() == (0, 1.02)
    assert "2 \u2192 6" in fig._suptitle.get_text()


def test_plot_history_static_freeze_and_no_validation() -> None:
    fig = plot_history([{"epoch": 0, "train_loss": 0.9, "trainable_blocks": 3}])
    loss_ax, metric_ax = fig.axes
    assert _vertical_lines(loss_ax) == []
    assert [line.get_label() for line in loss_ax.lines] == ["train_loss"]
    assert any("no validation metrics" in t.get_text() for t in metric_ax.texts)
    assert "1 epoch," in fig._suptitle.get_text()


def test_plot_history_uses_a_log_scale_only_for_a_loss_spike() -> None:
    spike = [{"epoch": 0, "train_loss": 5000.0}, *({"epoch": e, "train_loss": 1.0} for e in range(1, 5))]
    assert plot_history(spike).axes[0].get_yscale() == "log"
    falling = [{"epoch": e, "train_loss": 1.0 / 10**e} for e in range(4)]  # no outlier: stays linear
    assert plot_history(falling).axes[0].get_yscale() == "linear"


@pytest.mark.parametrize("history", [[], [{"train_loss": 1.0}], ["epoch 0"]])
def test_plot_history_rejects_bad_input(history: list) -> None:
    with pytest.raises(ValueError, match="history"):
        plot_history(history)


class Constant(nn.Module):
    """Predicts the same logits for every input (per pixel for segmentation); records its mode."""

    data_config = HALF

    def __init__(self, logits: list[float], task: str = "classification") -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))
        self.task = task
        self.modes: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.modes.append(self.training)
        if self.task == "segmentation":
            return self.logits.view(1, -1, 1, 1).expand(len(x), -1, *x.shape[-2:])
        return self.logits.expand(len(x), -1)


def test_show_predictions_titles_predicted_vs_true(tmp_path: Path) -> None:
    model = Constant([0.0, 2.0, 0.0])  # always class 1, softmax 0.79
    model.train()
    images = torch.zeros(6, 3, 8, 8)  # 0 normalised with mean 0.5, std 0.5 is grey 0.5
    labels = torch.tensor([0, 1, 2, 1, 0, 1])
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    path = tmp_path / "predictions.png"
    fig = show_predictions(model, loader, path, max_images=5, classes=["ant", "bee", "wasp"])
    assert path.read_bytes().startswith(PNG)
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert len(shown) == 5  # max_images, across two batches
    titles = [ax.title.get_text() for ax in shown]
    assert titles[0] == "pred: bee 79%\ntrue: ant" and titles[1] == "pred: bee 79%\ntrue: bee"
    colours = [to_hex(ax.title.get_color()) for ax in shown]
    assert colours == ["#cf222e", "#1a7f37", "#cf222e", "#1a7f37", "#cf222e"]  # red wrong, green right
    assert "2/5 correct" in fig._suptitle.get_text()
    np.testing.assert_allclose(shown[0].get_images()[0].get_array(), 0.5)  # normalisation undone
    assert model.modes == [False] and model.training  # one forward in eval mode, then the mode restored


def test_show_predictions_without_targets_uses_dataset_classes() -> None:
    dataset = TensorDataset(torch.zeros(2, 3, 8, 8))
    dataset.classes = ["cat", "dog"]
    loader = DataLoader(dataset, batch_size=2)
    fig = show_predictions(Constant([0.0, 1.0]), (batch[0] for batch in loader))
    assert [ax.title.get_text() for ax in fig.axes if ax.get_images()] == ["pred: 1 73%"] * 2
    fig = show_predictions(Constant([0.0, 1.0]), [(torch.zeros(1, 3, 8, 8),)], classes=["cat", "dog"])
    assert [ax.title.get_text() for ax in fig.axes if ax.get_images()] == ["pred: dog 73%"]
    subset = DataLoader(Subset(dataset, [1]), batch_size=1)  # names are found through a Subset too
    fig = show_predictions(Constant([0.0, 1.0]), subset)
    assert [ax.title.get_text() for ax in fig.axes if ax.get_images()] == ["pred: dog 73%"]


def test_show_predictions_overlays_true_and_predicted_masks(tmp_path: Path) -> None:
    model = Constant([5.0, 0.0, 0.0], task="segmentation")  # predicts background everywhere
    images = torch.zeros(2, 3, 8, 8)
    images[:, 0] = 0.6  # reddish: shown as the grey 0.299 * 0.8 + 0.701 * 0.5 under the overlay
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, :4, :4] = 2  # a quarter of each image is class 2
    masks[1, 7, 7] = 255  # ignored: never tinted, not counted
    dataset = TensorDataset(images, masks)
    dataset.classes = ["background", "circle", "square"]
    path = tmp_path / "seg.png"
    fig = show_predictions(model, DataLoader(dataset, batch_size=2), path)
    assert path.read_bytes().startswith(PNG)
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.title.get_text() for ax in shown] == [
        "#0 true", "#0 predicted (75% px)", "#1 true", "#1 predicted (75% px)",
    ]  # fmt: skip
    true0, pred0 = (ax.get_images()[0].get_array() for ax in shown[:2])
    grey = np.full(3, 0.299 * 0.8 + 0.701 * 0.5)
    assert not np.allclose(true0[0, 0], grey) and np.allclose(true0[6, 6], grey)  # only class 2 is tinted
    np.testing.assert_allclose(pred0, np.broadcast_to(grey, pred0.shape))  # background: not tinted
    np.testing.assert_allclose(shown[2].get_images()[0].get_array()[7, 7], grey)  # 255 stays clear
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["circle", "square"]


def test_show_predictions_rejects_bad_arguments() -> None:
    model = Constant([0.0, 1.0])
    with pytest.raises(ValueError, match="max_images"):
        show_predictions(model, [], max_images=0)
    with pytest.raises(ValueError, match="no batches"):
        show_predictions(model, [])


def test_missing_matplotlib_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):  # a dependency: only a broken install
        plot_history(_history([1]))
    with pytest.raises(ImportError, match="matplotlib"):
        show_predictions(Constant([0.0, 1.0]), [torch.zeros(1, 3, 8, 8)])


def test_a_plot_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    history = [{"epoch": 0, "train_loss": 1.0, "lr": 1e-3, "trainable_blocks": 2, "seconds": 1.0}]
    path = tmp_path / "history.png"
    plot_history(history, path)
    before = path.read_bytes()

    def broken(self: Figure, fname: str, **kwargs: object) -> None:
        Path(fname).write_bytes(b"\x89PNG half")  # killed or out of disk halfway
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="No space"):
        plot_history(history, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["history.png"]


@pytest.mark.parametrize("panels", [1, 2, 4])
def test_detection_title_and_legend_stay_inside_the_figure(panels: int) -> None:
    """With one or two panels the figure is narrow: its title wraps and its legend takes fewer columns
    instead of running off both sides."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from transferkit.viz.detection_plots import draw_detection

    boxes = {"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "labels": torch.tensor([1])}
    output = {**boxes, "scores": torch.tensor([0.9])}
    names = ["circle", "square", "triangle", "pentagon", "hexagon", "star", "ring"]
    fig = draw_detection([np.zeros((32, 32, 3))] * panels, [output] * panels, [boxes] * panels, names, 4)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    for artist in (fig._suptitle, fig.legends[0]):
        extent = artist.get_window_extent(canvas.get_renderer())
        assert 0 <= extent.x0 and extent.x1 <= fig.bbox.width, (artist, extent, fig.bbox.width)
    assert " ".join(fig._suptitle.get_text().split()) == (
        "detection: predicted (solid, score >= 0.3) vs true boxes (dashed)"
    )
