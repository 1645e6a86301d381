"""Freezing that holds: all / last_n / gradual policies, frozen norm and dropout layers, parameter groups."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import transferkit
from transferkit import FeatureInfo, build_model, load_model

# resnet18 blocks, input -> output, with their parameter counts (stem = conv1 + bn1).
RESNET18_BLOCKS = {
    "stem": 9536,
    "layer1.0": 73984,
    "layer1.1": 73984,
    "layer2.0": 230144,
    "layer2.1": 295424,
    "layer3.0": 919040,
    "layer3.1": 1180672,
    "layer4.0": 3673088,
    "layer4.1": 4720640,
}
RESNET18_HEAD = 512 * 2 + 2  # Linear(512, 2)
# Trainable backbone parameters of resnet18 under last_n, for n = 0 .. 9.
RESNET18_LAST_N = [
    0,
    4720640,
    8393728,
    9574400,
    10493440,
    10788864,
    11019008,
    11092992,
    11166976,
    11176512,
]

TORCHVISION = [
    "resnet18",
    "alexnet",
    "vgg16",
    "squeezenet1_0",
    "densenet121",
    "inception_v3",
    "googlenet",
    "shufflenet_v2_x1_0",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "mnasnet1_0",
]
TIMM = {
    "timm/resnet18": {},
    "timm/efficientnet_b0": {},
    "timm/convnext_atto": {},
    "timm/vit_tiny_patch16_224": {"img_size": 64},
}
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
pytestmark = pytest.mark.usefixtures("one_torch_thread")
STATS = ("running_mean", "running_var", "num_batches_tracked")


# ---------------------------------------------------------------------------------------------------------
# helpers


def _block_of_param(model: transferkit.TransferModel) -> dict[str, str]:
    """Backbone parameter name -> block name, from ``backbone.blocks``."""
    return {p: b for b, ps in model.backbone.blocks.items() for p in ps}


def _block_of_key(model: transferkit.TransferModel, key: str) -> str:
    """The block a backbone state_dict key (parameter or buffer) belongs to."""
    owner = _block_of_param(model)
    if key in owner:
        return owner[key]
    module = key.rpartition(".")[0]
    blocks = {b for p, b in owner.items() if p.startswith(module + ".")}
    assert len(blocks) == 1, f"cannot place buffer {key} in one block: {blocks}"
    return blocks.pop()


def _grad_blocks(model: transferkit.TransferModel) -> list[str]:
    """Blocks whose parameters require grad, checking that each block is all-or-nothing."""
    named = dict(model.backbone.named_parameters())
    result = []
    for block, params in model.backbone.blocks.items():
        flags = {named[p].requires_grad for p in params}
        assert len(flags) == 1, f"block {block} is partly frozen"
        if flags.pop():
            result.append(block)
    return result


def _top_modules(model: transferkit.TransferModel, block: str) -> list[nn.Module]:
    """The outermost backbone modules whose parameters all lie in ``block`` (resnet's stem: conv1, bn1)."""
    owner = _block_of_param(model)
    inside: dict[str, bool] = {}
    result = []
    for path, module in model.backbone.named_modules():
        names = [f"{path}.{n}" if path else n for n, _ in module.named_parameters()]
        inside[path] = bool(names) and all(owner[n] == block for n in names)
        if inside[path] and not inside.get(path.rpartition(".")[0], False):
            result.append(module)
    assert result, block
    return result


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def _input(model: transferkit.TransferModel, size: int = 64, batch: int = 2) -> torch.Tensor:
    channels = model.data_config["input_size"][0]
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))


def _steps(
    model: transferkit.TransferModel, x: torch.Tensor, optimizer: torch.optim.Optimizer, n: int
) -> None:
    """``n`` optimizer steps in ``model.train()`` mode on a fixed batch."""
    model.train()
    target = torch.arange(x.shape[0]) % model.num_classes
    for _ in range(n):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()


def _adamw(model: transferkit.TransferModel, lr: float = 1e-2) -> torch.optim.AdamW:
    # weight decay on: it would move frozen weights if the optimizer ever touched them
    return torch.optim.AdamW(model.param_groups(lr, weight_decay=0.1))


def _summary_rows(text: str) -> dict[str, list[str]]:
    """Parse freeze_summary(): first column -> the other columns."""
    rows = {}
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and not set(cells[0]) <= {"-"}:
            rows[cells[0]] = cells[1:]
    return rows


# ---------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def _resnet18_base() -> transferkit.TransferModel:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes=2, pretrained=False)


@pytest.fixture
def new_resnet18(_resnet18_base: transferkit.TransferModel) -> Callable[[], transferkit.TransferModel]:
    """Fresh, unfrozen resnet18 classifiers (2 classes); a copy is cheaper than a build."""

    def make() -> transferkit.TransferModel:
        model = copy.deepcopy(_resnet18_base)
        assert model.freeze_state()["policy"] == "none"
        return model

    return make


@pytest.fixture(scope="module")
def shared_resnet18(_resnet18_base: transferkit.TransferModel) -> transferkit.TransferModel:
    """One resnet18 for tests that only set and read freeze states (each sets its own first)."""
    return copy.deepcopy(_resnet18_base)


# ---------------------------------------------------------------------------------------------------------
# 1. resnet18 blocks and last_n


def test_resnet18_has_nine_blocks_with_pinned_sizes(
    new_resnet18: Callable[[], transferkit.TransferModel],
) -> None:
    model = new_resnet18()
    assert model.blocks == list(RESNET18_BLOCKS)
    named = dict(model.backbone.named_parameters())
    sizes = {b: sum(named[p].numel() for p in ps) for b, ps in model.backbone.blocks.items()}
    assert sizes == RESNET18_BLOCKS
    assert sum(p.numel() for p in model.head.parameters()) == RESNET18_HEAD


def test_last_n_trainable_counts_resnet18(new_resnet18: Callable[[], transferkit.TransferModel]) -> None:
    model = new_resnet18()
    for n, expected in enumerate(RESNET18_LAST_N):
        model.freeze(policy="last_n", n=n)
        expected_blocks = list(RESNET18_BLOCKS)[9 - n :]
        assert model.trainable_blocks == expected_blocks, n
        assert _grad_blocks(model) == expected_blocks, n
        backbone = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert backbone == expected, n
        assert total == expected + RESNET18_HEAD, n  # the head always trains
        assert all(p.requires_grad for p in model.head.parameters())
    assert RESNET18_LAST_N == [sum(list(RESNET18_BLOCKS.values())[9 - n :]) for n in range(10)]


def test_last_4_resnet18_trains_layer3_and_layer4_only(
    new_resnet18: Callable[[], transferkit.TransferModel],
) -> None:
    model = new_resnet18()
    model.freeze(policy="last_n", n=4)
    assert model.trainable_blocks == ["layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    seen = {"trains": 0, "frozen": 0}
    for name, p in model.backbone.named_parameters():
        local = name.removeprefix("body.")
        if local.startswith(("layer3.", "layer4.")):
            assert p.requires_grad, name
            seen["trains"] += 1
        else:
            assert local.startswith(("conv1.", "bn1.", "layer1.", "layer2.")), name
            assert not p.requires_grad, name
            seen["frozen"] += 1
    assert seen["trains"] > 0 and seen["frozen"] > 0
    model.train()
    for name, m in model.backbone.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.training == name.removeprefix("body.").startswith(("layer3.", "layer4.")), name


# ---------------------------------------------------------------------------------------------------------
# 2. frozen state_dicts stay bit-identical


def test_freeze_all_keeps_backbone_bit_identical_while_head_moves(
    new_resnet18: Callable[[], transferkit.TransferModel],
) -> None:
    model = new_resnet18()
    model.freeze("all")
    assert model.trainable_blocks == [] and _grad_blocks(model) == []
    before_backbone, before_head = _snapshot(model.backbone), _snapshot(model.head)
    model.eval()
    model.train()  # a later train() must not wake the frozen norm layers
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.head.training
    _steps(model, _input(model, 32), _adamw(model), 6)
    assert _changed(before_backbone, model.backbone) == set()  # parameters, running stats, num_batches
    assert _changed(before_head, model.head) == set(before_head)
    assert any(k.endswith("num_batches_tracked") for k in before_backbone)


def test_freeze_all_bn_train_moves_running_statistics_only(
    new_resnet18: Callable[[], transferkit.TransferModel],
) -> None:
    model = new_resnet18()
    model.freeze("all", bn="train")
    before = _snapshot(model.backbone)
    _steps(model, _input(model, 32), _adamw(model), 3)
    changed = _changed(before, model.backbone)
    buffers = {k for k in before if k.endswith(STATS)}
    params = {n for n, _ in model.backbone.named_parameters()}
    assert changed == buffers  # every running statistic moved, no weight did
    assert not changed & params
    assert int(model.backbone.state_dict()["body.bn1.num_batches_tracked"]) == 3


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_last_n_frozen_part_bit_identical(
    bn: str, new_resnet18: Callable[[], transferkit.TransferModel]
) -> None:
    model = new_resnet18()
    model.freeze("last_n", n=4, bn=bn)
    trainable = set(model.trainable_blocks)
    before = _snapshot(model.backbone)
    _steps(model, _input(model, 32), _adamw(model), 3)
    changed = _changed(before, model.backbone)
    for key in before:
        block = _block_of_key(model, key)
        is_stat = key.endswith(STATS)
        if block in trainable or (bn == "train" and is_stat):
            assert key in changed, f"{key} ({block}) should have moved"
        else:
            assert key not in changed, f"{key} ({block}) is frozen but moved"


# ---------------------------------------------------------------------------------------------------------
# 3. gradual unfreezing with AdamW over param_groups


def test_gradual_trains_each_block_from_the_epoch_it_unfreezes(
    new_resnet18: Callable[[], transferkit.TransferModel],
) -> None:
    model = new_resnet18()
    model.freeze("gradual", n=1, step=2, every=2)
    optimizer = torch.optim.AdamW(model.param_groups(1e-3, layer_decay=0.8, weight_decay=0.05))
    layout = [(g["name"], len(g["params"])) for g in optimizer.param_groups]
    x = _input(model, 32)
    unfreeze_epoch = {b: None for b in model.blocks}
    first_moved: dict[str, int] = {}
    for epoch in range(9):
        model.apply_schedule(epoch)
        k = min(9, 1 + 2 * (epoch // 2))
        assert model.trainable_blocks == model.blocks[9 - k :]
        for b in model.trainable_blocks:
            unfreeze_epoch[b] = epoch if unfreeze_epoch[b] is None else unfreeze_epoch[b]
        before = _snapshot(model.backbone)
        _steps(model, x, optimizer, 1)
        moved_keys = _changed(before, model.backbone)
        owner = _block_of_param(model)
        for block, params in model.backbone.blocks.items():
            moved = [p in moved_keys for p in params]
            if block in model.trainable_blocks:
                assert all(moved), f"epoch {epoch}: trainable block {block} did not train"
                first_moved.setdefault(block, epoch)
            else:
                assert not any(moved), f"epoch {epoch}: frozen block {block} moved"
        assert {owner[k] for k in moved_keys if k in owner} == set(model.trainable_blocks)
        assert [(g["name"], len(g["params"])) for g in optimizer.param_groups] == layout
    assert first_moved == unfreeze_epoch
    assert first_moved["layer4.1"] == 0 and first_moved["layer3.1"] == 2 and first_moved["stem"] == 8


def test_gradual_formula_and_static_policies_ignore_the_schedule(
    new_resnet18: Callable[[], transferkit.TransferModel],
) -> None:
    model = new_resnet18()
    model.freeze("gradual", n=2, step=3, every=2)
    for epoch in range(12):
        model.apply_schedule(epoch)
        assert len(model.trainable_blocks) == min(9, 2 + 3 * (epoch // 2))
        assert _grad_blocks(model) == model.trainable_blocks
    model.freeze("gradual")  # defaults n=0, step=1, every=1
    assert model.trainable_blocks == []
    model.apply_schedule(3)
    assert model.trainable_blocks == model.blocks[-3:]
    model.freeze("last_n", n=2)
    model.apply_schedule(7)
    assert model.trainable_blocks == model.blocks[-2:]
    model.freeze("all")
    model.apply_schedule(7)
    assert model.trainable_blocks == [] and _grad_blocks(model) == []


def test_freeze_state_round_trip_resumes_gradual_schedule(
    tmp_path: Path, new_resnet18: Callable[[], transferkit.TransferModel]
) -> None:
    model = new_resnet18()
    model.freeze("gradual", n=0, step=1, every=2, bn="train")
    model.apply_schedule(5)
    assert model.trainable_blocks == model.blocks[-2:]
    state = json.loads(json.dumps(model.freeze_state()))  # JSON-able, as checkpoints store it
    assert state["policy"] == "gradual" and state["epoch"] == 5
    assert (state["n"], state["step"], state["every"], state["bn"]) == (0, 1, 2, "train")

    resumed = new_resnet18()
    assert resumed.trainable_blocks == resumed.blocks  # no policy yet
    resumed.load_freeze_state(state)
    assert resumed.trainable_blocks == model.trainable_blocks == _grad_blocks(resumed)
    assert resumed.freeze_state() == state
    for epoch in (6, 7, 8, 30):  # continues the same schedule
        model.apply_schedule(epoch)
        resumed.apply_schedule(epoch)
        assert resumed.trainable_blocks == model.trainable_blocks == _grad_blocks(resumed)
    assert len(resumed.trainable_blocks) == 9

    # model.save keeps the freeze state too
    model.freeze("gradual", n=1, step=1, every=3)
    model.apply_schedule(4)
    model.save(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.freeze_state() == model.freeze_state()
    assert loaded.trainable_blocks == model.blocks[-2:] == _grad_blocks(loaded)
    loaded.train()
    stem = [m for top in _top_modules(loaded, "stem") for m in top.modules()]
    assert any(isinstance(m, nn.BatchNorm2d) for m in stem) and not any(m.training for m in stem)


def test_load_freeze_state_rejects_states_that_do_not_fit(
    new_resnet18: Callable[[], transferkit.TransferModel],
) -> None:
    model = new_resnet18()
    state = {"policy": "last_n", "n": 12, "step": None, "every": None, "bn": "frozen", "epoch": 0}
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        model.load_freeze_state(state)
    with pytest.raises(ValueError, match="unexpected keys color"):
        model.load_freeze_state({"policy": "all", "color": 1})
    with pytest.raises(ValueError, match="epoch"):
        model.load_freeze_state({"policy": "gradual", "n": 0, "step": 1, "every": 1, "epoch": -1})
    assert model.freeze_state()["policy"] == "none" and model.trainable_blocks == model.blocks


# ---------------------------------------------------------------------------------------------------------
# freeze_summary, unfreeze, param_groups


def test_freeze_summary_table(new_resnet18: Callable[[], transferkit.TransferModel]) -> None:
    model = new_resnet18()
    model.freeze("last_n", n=4)
    text = model.freeze_summary()
    rows = _summary_rows(text)
    assert rows["block"] == ["params", "trainable", "norm mode"]
    for block, size in RESNET18_BLOCKS.items():
        params, trainable, mode = rows[block]
        assert params == f"{size:,}"
        frozen = block not in ("layer3.0", "layer3.1", "layer4.0", "layer4.1")
        assert (trainable, mode) == (("no", "eval (frozen)") if frozen else ("yes", "train")), block
    assert rows["head"][:2] == [f"{RESNET18_HEAD:,}", "yes"]
    assert rows["total"][:2] == [
        f"{sum(RESNET18_BLOCKS.values()) + RESNET18_HEAD:,}",
        f"{RESNET18_LAST_N[4] + RESNET18_HEAD:,}",
    ]
    model.freeze("all", bn="train")  # frozen weights, norm layers still updating
    rows = _summary_rows(model.freeze_summary())
    assert all(rows[b][1:] == ["no", "train"] for b in RESNET18_BLOCKS)


def test_unfreeze_restores_training_everywhere(new_resnet18: Callable[[], transferkit.TransferModel]) -> None:
    model = new_resnet18()
    model.freeze("all")
    model.unfreeze()
    assert model.trainable_blocks == model.blocks
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert all(m.training for m in model.modules())
    assert "eval (frozen)" not in model.freeze_summary()


def test_param_groups_layer_decay_weight_decay_and_layout() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", neck="fpn_lite", num_classes=2, pretrained=False)
    lr, decay = 1e-3, 0.5
    groups = model.param_groups(lr, layer_decay=decay, weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # every parameter exactly once
    by_name = {g["name"]: g for g in groups}
    assert len(by_name) == len(groups)
    blocks = model.blocks
    for i, block in enumerate(blocks):
        unit = [
            g for name, g in by_name.items() if name in (f"backbone.{block}", f"backbone.{block}/no_decay")
        ]
        assert unit, block
        assert {id(p) for g in unit for p in g["params"]} == {
            id(p) for n, p in model.backbone.named_parameters() if n in model.backbone.blocks[block]
        }
        for g in unit:
            assert g["lr"] == pytest.approx(lr * decay ** (len(blocks) - i), rel=1e-12), block
    for part in ("neck", "head"):
        unit = [g for name, g in by_name.items() if name.split("/")[0] == part]
        assert {id(p) for g in unit for p in g["params"]} == {
            id(p) for p in getattr(model, part).parameters()
        }
        assert all(g["lr"] == lr for g in unit)
    for g in groups:
        assert all(p.ndim <= 1 for p in g["params"]) or all(p.ndim > 1 for p in g["params"])
        expected_wd = 0.0 if g["params"][0].ndim <= 1 else 0.05
        assert g["weight_decay"] == expected_wd, g["name"]
    norm_and_bias = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    zero_wd = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert norm_and_bias and all(id(p) in zero_wd for p in norm_and_bias)
    assert id(model.head.fc.bias) in zero_wd and id(model.head.fc.weight) not in zero_wd

    # frozen blocks are included: the layout does not depend on the freeze state
    layout = [(g["name"], len(g["params"]), g["lr"]) for g in groups]
    model.freeze("all")
    assert [
        (g["name"], len(g["params"]), g["lr"]) for g in model.param_groups(lr, layer_decay=decay)
    ] == layout
    torch.optim.AdamW(model.param_groups(lr, layer_decay=decay))  # accepted as is

    # backbone_lr_mult without layer decay
    groups = model.param_groups(lr, backbone_lr_mult=0.1)
    for g in groups:
        expected = lr * 0.1 if g["name"].startswith("backbone.") else lr
        assert g["lr"] == pytest.approx(expected), g["name"]


@pytest.mark.parametrize(
    ("name", "kwargs", "exempt"),
    [
        ("timm/vit_tiny_patch16_224", {"img_size": 64}, {"cls_token", "pos_embed"}),
        ("vit_b_16", {}, {"class_token", "pos_embedding"}),
        ("swin_t", {}, {"relative_position_bias_table"}),
    ],
)
def test_param_groups_exempt_tokens_and_position_embeddings_from_decay(
    name: str, kwargs: dict, exempt: set[str]
) -> None:
    # the tensors are never read: build on the meta device (vit_b_16 is 86M parameters)
    with torch.device("meta"):
        model = build_model(name, num_classes=2, pretrained=False, backbone_kwargs=kwargs)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = model.param_groups(1e-3, weight_decay=0.05)
    exempt_matrices = {
        names[id(p)].rsplit(".", 1)[-1]
        for g in groups
        if g["weight_decay"] == 0.0
        for p in g["params"]
        if p.ndim > 1
    }
    assert exempt_matrices == exempt  # and every other matrix or kernel is decayed
    decayed = [p for g in groups if g["weight_decay"] == 0.05 for p in g["params"]]
    assert decayed and all(p.ndim > 1 for p in decayed)


# ---------------------------------------------------------------------------------------------------------
# 5. bad arguments


@pytest.mark.parametrize(
    ("kwargs", "patterns"),
    [
        ({"policy": "last_n", "n": 10}, [r"\[0, 9\]", "n=10"]),
        ({"policy": "last_n", "n": -1}, [r"\[0, 9\]", "n=-1"]),
        ({"policy": "gradual", "n": 10}, [r"\[0, 9\]"]),
        ({"policy": "last_n"}, ["needs n", r"0\.\.9"]),
        ({"policy": "everything"}, ["'everything'", "none", "all", "last_n", "gradual"]),
        ({"policy": "all", "n": 2}, ["'all'", "no arguments", "unexpected n"]),
        ({"policy": "last_n", "n": 2, "step": 1}, ["'last_n' takes n", "unexpected step"]),
        ({"policy": "none", "every": 2}, ["'none'", "unexpected every"]),
        ({"policy": "gradual", "step": 0}, ["step", ">= 1"]),
        ({"policy": "gradual", "every": 0}, ["every", ">= 1"]),
        ({"policy": "last_n", "n": 2.0}, ["n must be an int"]),
        ({"policy": "all", "bn": "sometimes"}, ["frozen", "train", "'sometimes'"]),
    ],
)
def test_bad_freeze_arguments_raise_with_the_valid_choices(
    kwargs: dict, patterns: list[str], shared_resnet18: transferkit.TransferModel
) -> None:
    model = shared_resnet18
    model.freeze("last_n", n=3)
    with pytest.raises(ValueError) as info:
        model.freeze(**kwargs)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))
    # a rejected call changes nothing
    assert model.trainable_blocks == model.blocks[-3:] == _grad_blocks(model)


def test_apply_schedule_rejects_negative_epochs(
    new_resnet18: Callable[[], transferkit.TransferModel],
) -> None:
    model = new_resnet18()
    model.freeze("gradual", n=1)
    with pytest.raises(ValueError, match=">= 0"):
        model.apply_schedule(-1)
    assert model.trainable_blocks == model.blocks[-1:]


# ---------------------------------------------------------------------------------------------------------
# 4. every torchvision model of the list, and timm backbones


def _check_last_n_and_freeze_all(model: transferkit.TransferModel, size: int) -> None:
    blocks = model.blocks
    assert len(blocks) >= 2
    for n in range(len(blocks) + 1):
        model.freeze("last_n", n=n)
        assert model.trainable_blocks == blocks[len(blocks) - n :]
        assert _grad_blocks(model) == blocks[len(blocks) - n :]
    model.freeze("all")
    model.train()
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert not any(m.training for m in norms)
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, nn.Dropout))
    before_backbone, before_head = _snapshot(model.backbone), _snapshot(model.head)
    _steps(model, _input(model, size), _adamw(model), 2)
    assert _changed(before_backbone, model.backbone) == set()
    assert _changed(before_head, model.head) == set(before_head)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_backbones_last_n_and_freeze_all(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, pretrained=False)
    _check_last_n_and_freeze_all(model, 128 if name == "inception_v3" else 64)


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_backbones_last_n_and_freeze_all(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=2, pretrained=False, backbone_kwargs=TIMM[name])
    assert model.blocks[0] == "stem"
    _check_last_n_and_freeze_all(model, 64)


def test_timm_norm_act_layers_are_held_in_eval() -> None:
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    model = build_model("timm/efficientnet_b0", num_classes=2, pretrained=False)
    model.freeze("last_n", n=3)
    trainable = set(model.trainable_blocks)
    model.train()
    checked = {True: 0, False: 0}
    for block in model.blocks:
        for m in (m for top in _top_modules(model, block) for m in top.modules()):
            if isinstance(m, BatchNormAct2d):
                assert m.training == (block in trainable), block
                checked[block in trainable] += 1
    assert checked[True] and checked[False]
    assert _summary_rows(model.freeze_summary())["stem"][1:] == ["no", "eval (frozen)"]


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_frozen_blocks_have_no_drop_path(name: str) -> None:
    torch.manual_seed(0)
    kwargs = {**TIMM[name], "drop_path_rate": 0.1}
    model = build_model(name, num_classes=2, pretrained=False, backbone_kwargs=kwargs)
    with (
        torch.no_grad()
    ):  # timm zero-inits the last norm of residual branches: a drop path would change nothing
        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
    model.freeze("last_n", n=1)
    frozen, last = model.blocks[-2], model.blocks[-1]
    outputs: dict[str, list[torch.Tensor]] = {frozen: [], last: []}
    for block in outputs:
        for top in _top_modules(model, block):
            top.register_forward_hook(
                lambda _m, _i, out, block=block: outputs[block].append(out.detach().clone())
            )
    x = _input(model)
    with torch.no_grad():
        model.train()
        model.backbone(x)
        model.backbone(x)
        model.eval()
        model.backbone(x)
    k = len(outputs[frozen]) // 3
    assert k >= 1
    first, second, reference = outputs[frozen][:k], outputs[frozen][k : 2 * k], outputs[frozen][2 * k :]
    for a, b, ref in zip(first, second, reference, strict=True):
        assert torch.equal(a, b) and torch.equal(a, ref)  # frozen: deterministic, same as in eval mode
    # control: the trainable last block does drop paths in train mode (timm scales kept paths by 1/keep)
    k = len(outputs[last]) // 3
    assert not torch.equal(outputs[last][k - 1], outputs[last][3 * k - 1])


def test_vit_dropout_between_blocks_is_off_when_frozen() -> None:
    # pos_drop sits between the stem and the first block, outside every block's module
    torch.manual_seed(0)
    kwargs = {"img_size": 64, "pos_drop_rate": 0.5, "proj_drop_rate": 0.1, "drop_path_rate": 0.1}
    model = build_model("timm/vit_tiny_patch16_224", num_classes=2, pretrained=False, backbone_kwargs=kwargs)
    x = _input(model)
    model.freeze("all")
    model.train()
    with torch.no_grad():
        first, second = model.backbone(x)[-1], model.backbone(x)[-1]
    assert torch.equal(first, second)
    # it goes with the stem it follows: off as soon as the stem is frozen
    (pos_drop,) = [m for name, m in model.backbone.named_modules() if name.endswith("pos_drop")]
    model.freeze("last_n", n=len(model.blocks) - 1)
    model.train()
    assert not pos_drop.training
    model.unfreeze()
    model.train()
    assert pos_drop.training
    with torch.no_grad():
        assert not torch.equal(model.backbone(x)[-1], model.backbone(x)[-1])


# ---------------------------------------------------------------------------------------------------------
# a custom backbone with BatchNorm1d / BatchNorm3d / SyncBatchNorm / GroupNorm


class TinyBackbone(nn.Module):
    """stem (BN2d) -> loose dropout -> seq (BN1d) -> vol (BN3d) -> sync (SyncBN) -> group (GroupNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.drop = nn.Dropout(0.5)  # parameter-free, in no block's module
        self.seq = nn.Sequential(nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8))
        self.vol = nn.Sequential(nn.Conv3d(8, 8, 1), nn.BatchNorm3d(8))
        self.sync = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.SyncBatchNorm(8))
        self.group = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Dropout(0.5))
        self.feature_info = FeatureInfo(channels=(8, 16), reductions=(2, 4))
        units = ("stem", "seq", "vol", "sync", "group")
        self.blocks = {u: [f"{u}.{n}" for n, _ in getattr(self, u).named_parameters()] for u in units}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.drop(self.stem(x))
        n, c, h, w = x.shape
        x = self.seq(x.flatten(2)).view(n, c, h, w)
        first = self.vol(x.unsqueeze(2)).squeeze(2)
        return [first, self.group(self.sync(first))]


def _tiny() -> transferkit.TransferModel:
    torch.manual_seed(0)
    return build_model(TinyBackbone(), num_classes=3, pretrained=False)


def _norm(model: transferkit.TransferModel, kind: type[nn.Module]) -> nn.Module:
    (found,) = [m for m in model.backbone.modules() if type(m) is kind]
    return found


def test_custom_backbone_norm_layers_held_in_eval_and_bit_identical() -> None:
    model = _tiny()
    assert model.blocks == ["stem", "seq", "vol", "sync", "group"]
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))

    # control: everything trains, every running statistic moves (SyncBatchNorm too, on CPU)
    before = _snapshot(model.backbone)
    _steps(model, x, _adamw(model), 2)
    assert _changed(before, model.backbone) == set(before)

    model.freeze("last_n", n=1)  # only "group" (GroupNorm) trains
    model.eval()
    model.train()
    for kind in BATCHNORMS:
        assert not _norm(model, kind).training, kind
    assert _norm(model, nn.GroupNorm).training  # a trainable block's GroupNorm is left alone
    assert not model.backbone.drop.training  # the loose dropout after the frozen stem is off
    rows = _summary_rows(model.freeze_summary())
    assert {b: rows[b][1:] for b in model.blocks} == {
        "stem": ["no", "eval (frozen)"],
        "seq": ["no", "eval (frozen)"],
        "vol": ["no", "eval (frozen)"],
        "sync": ["no", "eval (frozen)"],
        "group": ["yes", "-"],  # GroupNorm has no running statistics
    }
    before = _snapshot(model.backbone)
    _steps(model, x, _adamw(model), 3)
    changed = _changed(before, model.backbone)
    assert changed == {k for k in before if k.startswith("group.")} and changed

    model.freeze("last_n", n=4)  # the stem alone is frozen: the dropout that follows it is off too
    model.train()
    assert not model.backbone.drop.training and not _norm(model, nn.BatchNorm2d).training
    assert all(_norm(model, kind).training for kind in BATCHNORMS[:1] + BATCHNORMS[2:])


def test_custom_backbone_freeze_all_and_bn_train() -> None:
    model = _tiny()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    model.freeze("all")
    model.train()
    assert not _norm(model, nn.GroupNorm).weight.requires_grad
    assert _summary_rows(model.freeze_summary())["group"][1:] == ["no", "-"]
    with torch.no_grad():  # dropout (loose and in-block) is off: the frozen backbone is deterministic
        assert all(torch.equal(a, b) for a, b in zip(model.backbone(x), model.backbone(x), strict=True))
    before = _snapshot(model.backbone)
    _steps(model, x, _adamw(model), 3)
    assert _changed(before, model.backbone) == set()

    model.freeze("all", bn="train")
    model.train()
    for kind in BATCHNORMS:
        assert _norm(model, kind).training, kind
    assert not model.backbone.drop.training  # bn="train" is about norm layers only
    before = _snapshot(model.backbone)
    _steps(model, x, _adamw(model), 2)
    stats = {k for k in before if k.endswith(STATS)}
    assert len(stats) == 4 * 3
    assert _changed(before, model.backbone) == stats
