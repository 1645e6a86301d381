"""pretrained=: local files (safetensors / pth), mismatches, malicious pickles, the offline error."""

from __future__ import annotations

import os
import pickle
import re
import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import transferkit as tk
from transferkit import PretrainedUnavailableError, WeightsMismatchError


def _torchvision_file(tmp_path: Path, suffix: str, name: str = "resnet18") -> tuple[Path, dict]:
    torch.manual_seed(123)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt"])
def test_torchvision_weights_file_loads(tmp_path: Path, suffix: str) -> None:
    path, state = _torchvision_file(tmp_path, suffix)
    model = tk.build_model("resnet18", num_classes=3, pretrained=path)
    loaded = model.backbone.state_dict()
    for key in ("conv1.weight", "layer3.1.bn2.running_var", "layer4.1.conv2.weight"):
        assert torch.equal(loaded[f"body.{key}"], state[key])
    assert model.head.fc.out_features == 3  # the file's 1000-class fc was ignored


def test_timm_weights_file_loads(tmp_path: Path) -> None:
    torch.manual_seed(7)
    state = timm.create_model("efficientnet_b0").state_dict()
    path = tmp_path / "effnet.safetensors"
    save_file(state, str(path))
    model = tk.build_model("timm/efficientnet_b0", num_classes=2, pretrained=str(path))
    loaded = dict(model.backbone.named_parameters())
    assert torch.equal(loaded["body.conv_stem.weight"], state["conv_stem.weight"])
    assert torch.equal(loaded["body.blocks.6.0.conv_pwl.weight"], state["blocks.6.0.conv_pwl.weight"])


def test_mismatched_file_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path, _ = _torchvision_file(tmp_path, ".pth", name="resnet50")
    with pytest.raises(WeightsMismatchError, match="missing keys") as info:
        tk.build_model("resnet18", num_classes=2, pretrained=path)
    assert "unexpected keys" in str(info.value) and "layer1.0.conv3.weight" in str(info.value)


def test_three_channel_file_loads_into_in_chans_1(tmp_path: Path) -> None:
    path, state = _torchvision_file(tmp_path, ".safetensors")  # adapted, not refused (test_input_channels)
    model = tk.build_model("resnet18", num_classes=2, pretrained=path, in_chans=1)
    stem = model.backbone.state_dict()["body.conv1.weight"]
    assert torch.equal(stem, state["conv1.weight"].sum(1, keepdim=True))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Exploit()}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        tk.build_model("resnet18", num_classes=2, pretrained=path)
    assert not (tmp_path / "pwned").exists()


def test_missing_file_and_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tk.build_model("resnet18", num_classes=2, pretrained=str(tmp_path / "nope.pth"))
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match="suffix"):
        tk.build_model("resnet18", num_classes=2, pretrained=str(bad))


def test_unknown_weights_tag_lists_valid_tags() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        tk.build_model("resnet18", num_classes=2, pretrained="IMAGENET9K")
    with pytest.raises(ValueError, match="a1_in1k"):
        tk.build_model("timm/resnet18", num_classes=2, pretrained="nope_in1k")


@pytest.mark.parametrize("name", ["resnet18", "timm/resnet18"])
def test_offline_pretrained_fails_fast_with_ways_out(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(
        "transferkit.models.weights.reachable", lambda url: False
    )  # no network, even on a dev box
    start = time.monotonic()
    with pytest.raises(PretrainedUnavailableError) as info:
        tk.build_model(name, num_classes=2, pretrained=True)
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert "resnet18" in message and "pretrained=False" in message and "pretrained='/path/to" in message
    assert str(tmp_path) in message  # the cache location to put the file in


def test_offline_check_really_fails_here_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transferkit.models.weights import reachable

    if reachable("https://download.pytorch.org"):
        pytest.skip("this machine has network")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(PretrainedUnavailableError, match="no network"):
        tk.build_model("resnet18", num_classes=2, pretrained=True)
    assert time.monotonic() - start < 15


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_file_fine_tuned_on_other_classes_loads(tmp_path: Path, name: str) -> None:
    torch.manual_seed(5)
    state = torchvision.models.get_model(name, weights=None, num_classes=7).state_dict()
    path = tmp_path / f"{name}_7_classes.pth"
    torch.save(state, path)
    model = tk.build_model(name, num_classes=3, pretrained=path)
    body = model.backbone.body.state_dict()
    assert body and all(torch.equal(value, state[key]) for key, value in body.items())
    x = torch.randn(1, 3, 64, 64)
    assert model.eval()(x).shape == (1, 3)


def test_file_with_a_restructured_classifier_and_aux_heads_loads(tmp_path: Path) -> None:
    model = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    model.fc = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1024, 7))  # a fine-tuning recipe
    state = model.state_dict()
    path = tmp_path / "googlenet.safetensors"
    save_file(state, str(path))
    loaded = tk.build_model("googlenet", num_classes=3, pretrained=path).backbone.body.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in loaded.items())


def test_file_of_another_architecture_names_the_keys(tmp_path: Path) -> None:
    path, _ = _torchvision_file(tmp_path, ".pth", name="mobilenet_v3_small")
    with pytest.raises(WeightsMismatchError, match="missing keys") as info:
        tk.build_model("resnet18", num_classes=2, pretrained=path)
    assert "conv1.weight" in str(info.value) and "features.0.0.weight" in str(info.value)


# ----------------------------------------------------------------------------------- weight tags


def test_weight_tags_list_a_backbones_tags_with_the_default_marked() -> None:
    from transferkit.models.backbones import weight_tags

    assert weight_tags("resnet18") == [("IMAGENET1K_V1", True)]
    assert weight_tags("torchvision/resnet50") == [("IMAGENET1K_V1", False), ("IMAGENET1K_V2", True)]
    timm_tags = dict(weight_tags("timm/resnet50"))
    assert timm_tags["a1_in1k"] is True and sum(timm_tags.values()) == 1
    with pytest.raises(ValueError, match="resnet18"):
        weight_tags("resnet181")


_TAG = re.compile(r"\b(?:[A-Z0-9]+_)+V\d+\b|\b(?:[a-z0-9]+_)*in(?:1|12|21|22)k(?:_[a-z0-9]+)*\b")
_MODEL = re.compile(r"\b(?:(?:torchvision|timm)/)?[a-z][a-z0-9_]*\b")


def _doc_tags() -> list[tuple[str, str, str | None]]:
    """``(where, tag, model)`` for each weights tag in README.md and docs/*.md.

    The model is the one a dotted timm name gives (``timm/resnet50.a1_in1k``), else the nearest backbone
    named before the tag (within a few lines), else after it on the same line.
    """
    import torchvision.models as tvm

    known = set(tvm.list_models(module=tvm)) | set(timm.list_models())
    root = Path(__file__).resolve().parents[1]
    found = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = page.read_text()
        for match in _TAG.finditer(text):
            where = f"{page.name}:{text.count(chr(10), 0, match.start()) + 1}"
            if text[match.start() - 1] == ".":  # timm's model.tag
                model = re.findall(r"[\w/]+$", text[: match.start() - 1])[0]
                found.append((where, match[0], model))
                continue
            line_end = text.find("\n", match.end())
            before = [m[0] for m in _MODEL.finditer(text, max(0, match.start() - 300), match.start())]
            after = [m[0] for m in _MODEL.finditer(text, match.end(), line_end)]
            names = [n for n in before[::-1] + after if n.rpartition("/")[2] in known]
            found.append((where, match[0], names[0] if names else None))
    return found


def test_every_weights_tag_the_docs_name_exists_for_its_model() -> None:
    from transferkit.models.backbones import weight_tags

    tags = _doc_tags()
    assert len(tags) >= 5, tags  # the pattern still finds the docs' tags
    unnamed = [where for where, _, model in tags if model is None]
    assert not unnamed, f"name the backbone next to these weights tags: {unnamed}"
    wrong = [
        f"{where}: {model} has no {tag!r} (it has {[t for t, _ in weight_tags(model)]})"
        for where, tag, model in tags
        if tag not in {t for t, _ in weight_tags(model)}
    ]
    assert not wrong, wrong


# ----------------------------------------------------------------------------------- timm's own loading


def test_timm_file_at_another_img_size_loads_through_timms_checkpoint_filter(tmp_path: Path) -> None:
    """timm loads the file and runs the model's checkpoint filter: a ViT file made at 224 px loads into a
    64 px model with its position embeddings resampled, every other tensor as it is in the file."""
    torch.manual_seed(4)
    vit = timm.create_model("vit_tiny_patch16_224")
    path = tmp_path / "vit224.safetensors"
    save_file(vit.state_dict(), str(path))
    model = tk.build_model(
        "timm/vit_tiny_patch16_224", num_classes=2, pretrained=str(path), backbone_kwargs={"img_size": 64}
    )
    body = model.backbone.body.model
    assert body.pos_embed.shape == (1, 1 + 4 * 4, 192)
    assert torch.equal(body.pos_embed[:, 0], vit.pos_embed[:, 0])  # the class token's embedding is kept
    assert torch.equal(body.blocks[11].mlp.fc2.weight, vit.blocks[11].mlp.fc2.weight)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize(
    ("made_for", "built"), [("resnet34", "resnet18"), ("efficientnet_b1", "efficientnet_b0")]
)
def test_a_deeper_variants_timm_file_is_refused_not_loaded_in_part(
    tmp_path: Path, made_for: str, built: str
) -> None:
    """timm loads a feature extractor's weights leniently; a file of a deeper variant holds every key of
    the shallower one (same shapes) plus its extra blocks, and must not load as if it fitted."""
    path = tmp_path / f"{made_for}.pth"
    torch.save(timm.create_model(made_for).state_dict(), path)
    with pytest.raises(WeightsMismatchError, match="unexpected keys") as info:
        tk.build_model(f"timm/{built}", num_classes=2, pretrained=str(path))
    assert made_for in str(info.value) and "missing keys" in str(info.value)


def test_a_timm_file_missing_tensors_names_them(tmp_path: Path) -> None:
    state = timm.create_model("convnext_atto").state_dict()
    del state["stages.3.blocks.1.mlp.fc2.weight"]
    path = tmp_path / "holes.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsMismatchError, match=r"1 missing keys \['stages.3.blocks.1.mlp.fc2.weight'\]"):
        tk.build_model("timm/convnext_atto", num_classes=2, pretrained=str(path))


def test_a_timm_pickle_with_code_is_refused_before_timm_sees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pickle from the user or from the hub's cache is read as tensors only, never by timm's loader."""
    import transferkit.models.backbones.timm as timm_backbones

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pytorch_model.bin"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Exploit()}, f)
    monkeypatch.setattr(timm_backbones, "fetch_hf", lambda repo, model, filenames: path)
    for pretrained in (str(path), True):
        with pytest.raises(ValueError, match=str(path)):
            tk.build_model("timm/resnet18", num_classes=2, pretrained=pretrained)
    assert not (tmp_path / "pwned").exists()
