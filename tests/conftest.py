from __future__ import annotations

import warnings

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")


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
