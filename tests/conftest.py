from __future__ import annotations

import os
import signal
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file


def pytest_configure(config: pytest.Config) -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
    # The suite's inputs are tiny (32-96 px): a second thread gains nothing there, and two threads on a
    # busy 2-core runner stall each other (a 4 s test took 52 s). Subprocesses (CLI runs, torchrun) inherit
    # the setting through the environment; tests that time threads set their own count.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    # A shell without job control starts background commands with Ctrl-C ignored, and processes inherit
    # that: the tests of what Ctrl-C does (in this process and in the ones they start) need it back.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _tempfiles_in_pytest_folder(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docstring examples and library code use `tempfile`: their files go where pytest cleans up."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tempfile")))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 weights file from a randomly initialised model: 'pretrained' as far as the code knows."""
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("w") / "resnet18.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny convolutions gain nothing from threads, and threads stall badly on a busy 2-core runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
