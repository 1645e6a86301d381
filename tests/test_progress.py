"""Progress output: one clean line per epoch in a terminal, a log file or a notebook; tables that notebooks
render (`transferkit.training.progress`, `transferkit.models.freeze.Table`)."""

from __future__ import annotations

import io
import pickle
import re
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model
from transferkit.training.progress import bar_renders

ESCAPE = re.compile(r"\x1b\[")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fit(epochs: int = 2, **kwargs) -> list[dict]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, 32, 32), torch.arange(12) % 2)
    loaders = {"train": DataLoader(data, batch_size=4), "val": DataLoader(data, batch_size=6)}
    model = build_model("resnet18", num_classes=2, pretrained=False)
    return Trainer(model, epochs=epochs, lr=1e-3, **kwargs).fit(loaders)


def test_a_log_file_gets_one_plain_line_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()  # a file or a pipe: not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    history = _fit(epochs=2)
    text = log.getvalue()
    assert "\r" not in text and not ESCAPE.search(text), repr(text)
    lines = text.splitlines()
    assert len(lines) == 2, lines
    for epoch, (line, row) in enumerate(zip(lines, history, strict=True)):
        assert line.startswith(f"epoch {epoch + 1}/2: train_loss {row['train_loss']:.4g}, "), line
        assert f"val_acc {row['val_acc']:.4g}" in line and line.endswith("s)"), line
    assert "eval" not in text


def test_a_terminal_keeps_one_bar_line_per_epoch_with_validation_in_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    _fit(epochs=2)
    # What stays on screen: each line's last redraw (after its last \r).
    shown = [line.rsplit("\r", 1)[-1] for line in screen.getvalue().split("\n") if line.strip("\r ")]
    assert len(shown) == 2, shown
    for epoch, line in enumerate(shown):
        # 3 training + 2 validation batches in one bar that ends with the epoch's metrics
        assert line.startswith(f"epoch {epoch + 1}/2: 100%") and "5/5" in line and "val_acc=" in line, line
    assert "eval" not in screen.getvalue()


def test_progress_false_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    _fit(epochs=1, progress=False)
    assert log.getvalue() == ""


def test_evaluate_shows_no_bar_in_a_log_file(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    model = build_model("resnet18", num_classes=2, pretrained=False)
    data = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])), batch_size=2)
    Trainer(model).evaluate(data)
    assert log.getvalue() == ""


def test_bar_renders_only_on_a_terminal() -> None:
    assert bar_renders(Terminal()) and not bar_renders(io.StringIO())
    closed = io.StringIO()
    closed.close()
    assert not bar_renders(closed)


def test_freeze_summary_displays_as_a_table() -> None:
    model = build_model("resnet18", num_classes=2, pretrained=False)
    model.freeze("last_n", n=2)
    table = model.freeze_summary()
    assert isinstance(table, str) and table.splitlines()[0].split() == [
        "block",
        "params",
        "trainable",
        "norm",
        "mode",
    ]
    assert repr(table) == str(table)  # a notebook cell ending with it shows the table, not '...\n...'
    html = table._repr_html_()
    assert html.startswith("<table><thead><tr><th") and html.count("<tr>") == len(table.splitlines()) - 2
    assert '<td style="text-align: left">layer4.1</td><td style="text-align: right">4,720,640</td>' in html
    assert '<td style="text-align: left">stem</td>' in html and ">no</td>" in html and ">yes</td>" in html
    copy = pickle.loads(pickle.dumps(table))
    assert copy == table and copy._repr_html_() == html
