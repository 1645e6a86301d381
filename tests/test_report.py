"""The run report: `transferkit.viz.report` renders self-contained, escaped HTML; ``transferkit train``,
``demo`` and ``report`` write it; and it opens in headless Chromium on the demo's data and on a folder of
real photos, without console errors or broken images, at a laptop's and a phone's width."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_runner import run
from PIL import Image

from transferkit.viz.report import (
    Gallery,
    GalleryItem,
    Note,
    Picture,
    Report,
    Section,
    Table,
    reliability_svg,
    render_report,
    thumbnail,
    write_report,
)

HOSTILE = "<script>alert(1)</script>"
SECTIONS = ["plan", "curves", "metrics", "per-class", "interpretation", "timing", "environment"]


def _report(name: str = HOSTILE) -> Report:
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    return Report(
        f"run {name}",
        [
            Section("Plan", [Table("Model", ["setting", "value"], [["classes", name], ["epochs", 3]])]),
            Section("Pictures", [Picture(name, pixels, caption=name)]),
            Section(
                "Gallery",
                [Gallery(name, [GalleryItem(thumbnail(pixels, 16), f"true: {name}\nloss 1.0")]), Note(name)],
            ),
        ],
        subtitle=name,
    )


def test_every_string_from_the_data_is_escaped() -> None:
    page = render_report(_report())
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 7  # title, table, picture, gallery...
    assert 'alt="&lt;script&gt;' in page  # attributes too


def test_the_page_is_self_contained() -> None:
    page = render_report(_report())
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(script|link|iframe)\b", page)
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "img-src data:" in page  # the page's own policy refuses anything else


def test_sections_have_anchors_listed_in_the_contents() -> None:
    page = render_report(_report("x"))
    for anchor in ("plan", "pictures", "gallery"):
        assert f'<h2 id="{anchor}">' in page and f'href="#{anchor}"' in page


def test_write_report_is_atomic_and_refuses_a_link(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_report(_report("one"), target)
    assert "run one" in target.read_text()
    with pytest.raises(TypeError, match="Note, Table, Picture and Gallery"):  # rendered before writing
        write_report(Report("two", [Section("bad", ["not a block"])]), target)  # type: ignore[list-item]
    assert "run one" in target.read_text() and [p.name for p in tmp_path.iterdir()] == ["report.html"]
    elsewhere = tmp_path / "elsewhere.html"
    elsewhere.write_text("keep")
    link = tmp_path / "link.html"
    link.symlink_to(elsewhere)
    with pytest.raises(FileExistsError, match="symbolic link"):
        write_report(_report(), link)
    assert elsewhere.read_text() == "keep"


def test_thumbnails_and_the_reliability_diagram() -> None:
    png = thumbnail(np.full((90, 30, 3), 200, dtype=np.uint8), size=60)
    assert Image.open(__import__("io").BytesIO(png)).size == (20, 60)
    svg = reliability_svg([(0.0, 0.5, 0.3, 0.25, 4), (0.5, 1.0, 0.9, 0.8, 0)], ece=0.05)
    assert svg.count(b'fill="#4c8bf5"') == 1  # the empty bin draws no bar
    with pytest.raises(ValueError, match="size must be >= 1"):
        thumbnail(png, size=0)


# ----------------------------------------------------------------------------------- runs and the CLI


def _photo_folder(root: Path) -> Path:
    """Two classes of real photo crops (scikit-image's cat and coffee), one with a hostile name."""
    skimage_data = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(0)
    for name, photo in (("cat", skimage_data.chelsea()), ("<i>coffee", skimage_data.coffee())):
        for split, count in (("train", 6), ("val", 3)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                y, x = rng.integers(0, photo.shape[0] - 160), rng.integers(0, photo.shape[1] - 160)
                Image.fromarray(photo[y : y + 160, x : x + 160]).save(folder / f"{i}.jpg", quality=85)
    return root


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("photos")
    data, out = _photo_folder(root / "data"), root / "run"
    result = run("train", "--data", data, "--backbone", "resnet18", "--pretrained", "false",
                 "--freeze", "last_n:2", "--epochs", 1, "--image-size", 32, "--batch-size", 8, "--out", out,
                 "--device", "cpu")  # fmt: skip
    assert result.code == 0, result.err
    return data, out, result.out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = run("demo", "--quick", "--out", out)
    assert result.code == 0, result.err
    return out, result.out


def test_train_writes_the_report_and_prints_its_path(photo_run: tuple[Path, Path, str]) -> None:
    _, out, printed = photo_run
    page = (out / "report.html").read_text()
    assert f"report: {out / 'report.html'}" in printed.splitlines()
    for anchor in SECTIONS:
        assert f'<h2 id="{anchor}">' in page
    assert "&lt;i&gt;coffee" in page and "<i>" not in page
    assert page.count('<ul class="gallery"><li>') == 1 and page.count("<li><img") == 6  # all 6 val images
    for facts in ("resnet18", "Top losses", "Expected calibration error", "images per second", "torchvision"):
        assert facts in page
    assert not re.search(r"https?://", page)


def test_demo_lists_its_report(demo_run: tuple[Path, str]) -> None:
    out, printed = demo_run
    assert (out / "report.html").is_file()
    assert re.search(rf"^  {re.escape(str(out / 'report.html'))}\s+the run report", printed, re.MULTILINE)


def test_report_command_rewrites_it_elsewhere(photo_run: tuple[Path, Path, str], tmp_path: Path) -> None:
    data, out, _ = photo_run
    target = tmp_path / "again.html"
    result = run("report", out, "--out", target, "--device", "cpu")
    assert result.code == 0 and result.out.strip() == f"report: {target}", result.err
    page = target.read_text()
    assert all(f'<h2 id="{anchor}">' in page for anchor in SECTIONS)
    moved = tmp_path / "data"
    shutil.copytree(data, moved)
    cam = ["--cam"] if importlib.util.find_spec("pytorch_grad_cam") else []
    result = run("report", out, "--data", moved, "--out", tmp_path / "moved.html", "--device", "cpu", *cam)
    assert result.code == 0, result.err
    again = (tmp_path / "moved.html").read_text()
    assert str(moved / "val") not in page and "&lt;i&gt;coffee" in again
    assert ("Activation maps" in again) == bool(cam) and "Activation maps" not in page


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("no_val", "has no val/ split"),
        ("no_data", "does not exist; pass --data DIR"),
        ("no_run", "RUN .*: no such folder"),
        ("no_out_dir", "the folder .* does not exist"),
    ],
)
def test_report_command_errors_are_one_line(
    problem: str, message: str, photo_run: tuple[Path, Path, str], tmp_path: Path
) -> None:
    data, out, _ = photo_run
    args: list[Any] = ["report", out, "--device", "cpu"]
    if problem == "no_val":
        train_only = tmp_path / "train_only"
        shutil.copytree(data / "train", train_only / "train")
        args += ["--data", train_only]
    elif problem == "no_data":
        run_copy = tmp_path / "run"
        shutil.copytree(out, run_copy)
        meta = (run_copy / "transferkit.json").read_text().replace(str(data), str(tmp_path / "gone"))
        (run_copy / "transferkit.json").write_text(meta)
        args[1] = run_copy
    elif problem == "no_run":
        args[1] = tmp_path / "nothing"
    else:
        args += ["--out", tmp_path / "missing" / "report.html"]
    result = run(*args)
    assert result.code != 0 and len(result.err.strip().splitlines()) == 1
    assert re.search(message, result.err), result.err


def test_a_segmentation_report_shows_per_class_iou_and_the_worst_images(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from transferkit import build_model
    from transferkit.cli.run_report import build_run_report

    torch.manual_seed(0)
    model = build_model("resnet18", head="fcn", num_classes=2, pretrained=False, classes=["sky", "<b>sea"])
    images, masks = torch.randn(6, 3, 32, 32), torch.randint(0, 2, (6, 32, 32))
    Image.fromarray(np.full((40, 60, 3), 90, dtype=np.uint8)).save(tmp_path / "class_iou.png")
    history = [
        {"epoch": 0, "lr": 0.001, "trainable_blocks": 2, "train_loss": 0.9, "val_miou": 0.4, "seconds": 2.0}
    ]
    meta = {"task": "segmentation", "freeze": "all", "metrics": {"val_miou": 0.4}, "best_epoch": 1}
    loader = DataLoader(TensorDataset(images, masks), batch_size=4)
    report = build_run_report(tmp_path, model, meta, history, loader, train_images=8, device="cpu")
    page = render_report(report)
    assert all(f'<h2 id="{anchor}">' in page for anchor in SECTIONS)
    assert "Intersection over union" in page and "Lowest IoU" in page and "not part of the report" not in page
    # class_iou.png, the curves drawn from the history, and the worst images with their masks
    assert page.count("data:image/png;base64,") == 3
    assert "&lt;b&gt;sea" in page and "<b>sea" not in page
    assert ">4.0<" in page  # 8 training images in 2 s


# ----------------------------------------------------------------------------------- in a browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return os.environ.get("CHROMIUM") if os.environ.get("CHROMIUM") else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium executable on PATH (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable)
        yield launched
        launched.close()


def _look_at(browser: Any, page_file: Path, width: int) -> dict[str, Any]:
    """Load the page at ``width`` px: its errors, broken images, sections; a screenshot beside it."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
    page.goto(page_file.as_uri())
    seen = {
        "errors": errors,
        "broken": page.evaluate(
            "[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)"
        ),
        "images": page.evaluate("document.images.length"),
        "overflow": page.evaluate("document.documentElement.scrollWidth") - width,
        "sections": page.evaluate("[...document.querySelectorAll('h2[id]')].map(h => h.id)"),
        "scripts": page.evaluate("document.scripts.length"),
        "text": page.evaluate("document.body.innerText"),
    }
    page.screenshot(path=str(page_file.parent / f"report-{width}.png"), full_page=True)
    page.close()
    return seen


def _open_and_shoot(browser: Any, page_file: Path) -> dict[int, dict[str, Any]]:
    """What a laptop (1280 px) and a phone (390 px) show; screenshots of both beside the page."""
    return {width: _look_at(browser, page_file, width) for width in (1280, 390)}


def _check_page(seen: dict[int, dict[str, Any]]) -> None:
    for width, at in seen.items():
        assert at["errors"] == [], at["errors"]
        assert at["broken"] == [] and at["images"] >= 5
        assert at["overflow"] <= 0, f"at {width} px the page scrolls sideways; wide tables scroll inside"
        assert at["sections"] == SECTIONS and at["scripts"] == 0


def test_demo_report_in_chromium(browser: Any, demo_run: tuple[Path, str]) -> None:
    out, _ = demo_run
    seen = _open_and_shoot(browser, out / "report.html")
    _check_page(seen)
    assert "Top losses" in seen[390]["text"] and "circle" in seen[390]["text"]
    assert all((out / f"report-{width}.png").stat().st_size > 10_000 for width in (1280, 390))


def test_photo_folder_report_in_chromium(browser: Any, photo_run: tuple[Path, Path, str]) -> None:
    _, out, _ = photo_run
    seen = _open_and_shoot(browser, out / "report.html")
    _check_page(seen)
    assert "<i>coffee" in seen[1280]["text"]  # shown as text, not markup
    assert all((out / f"report-{width}.png").is_file() for width in (1280, 390))
