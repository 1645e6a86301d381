"""Property-based tests: random valid and invalid arguments to the public entry points.

For `build_model`, ``model.freeze``, ``model.param_groups``, `Trainer` and the command line's parsers,
hypothesis draws every argument from valid values, from invalid ones (wrong types, out of range, junk
names and keys) and, where validity depends on the other arguments, from values that may be refused. The
property: a call whose arguments are all valid works; a call with an invalid argument raises ValueError or
TypeError (transferkit's own subclasses included) whose message names an offending argument; never an
AssertionError, a bare KeyError or IndexError, an AttributeError, a TypeError from inside torch, or a hang.

Examples stay cheap: models are built on the meta device or built once and reused, and each target runs
300 derandomized examples (the same ones on every run, no example database).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import signal
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from transferkit import Trainer, build_model, list_heads, list_necks
from transferkit.cli import build_parser, parse_freeze, parse_pretrained
from transferkit.cli.options import UsageError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLES = 300
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure shows the example as drawn, at once
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HANG_S = 20  # one example taking this long counts as a hang


class Arg(NamedTuple):
    """A drawn value, and whether it is valid (True), invalid (False) or may be refused (None)."""

    value: Any
    valid: bool | None


class Spec(NamedTuple):
    """What an argument may be: valid values, invalid ones, and ones the other arguments may rule out."""

    valid: st.SearchStrategy
    invalid: st.SearchStrategy
    maybe: st.SearchStrategy | None = None


def arg(valid: st.SearchStrategy, invalid: st.SearchStrategy, maybe: st.SearchStrategy | None = None) -> Spec:
    return Spec(valid, invalid, maybe)


@st.composite
def arguments(draw: st.DrawFn, specs: dict[str, Spec]) -> dict[str, Arg]:
    """One call's arguments: none, one or two of them invalid, the others valid (or maybe refused)."""
    broken = draw(st.permutations(list(specs)))[: draw(st.sampled_from([0, 1, 1, 1, 2]))]
    drawn = {}
    for name, spec in specs.items():
        if name in broken:
            drawn[name] = Arg(draw(spec.invalid), False)
        elif spec.maybe is not None and draw(st.integers(0, 3)) == 0:
            drawn[name] = Arg(draw(spec.maybe), None)
        else:
            drawn[name] = Arg(draw(spec.valid), True)
    return drawn


NOT_INTS = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=4), st.just([1]), st.just({})
)
NOT_NUMBERS = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.just([1.0]), st.just({}))
BAD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf])
NOT_BOOLS = st.one_of(st.none(), st.integers(0, 1), st.sampled_from(["yes", "no", "", "False"]))
NOT_MAPPINGS = st.one_of(st.text(max_size=3), st.integers(), st.just([("a", 1)]), st.just(["x"]))
JUNK_KWARGS = st.dictionaries(st.sampled_from(["junk", "bogus_key"]), st.integers(), min_size=1)
PART_KWARGS = st.dictionaries(st.sampled_from(["junk", "bogus_key", "num_classes", "feature_info"]),
                              st.integers(), min_size=1)  # fmt: skip


@contextlib.contextmanager
def no_hang(seconds: int = HANG_S) -> Iterator[None]:
    def timeout(signum: int, frame: Any) -> None:
        raise TimeoutError(f"one example ran for over {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def check(
    call: Callable[..., Any], args: dict[str, Arg], aliases: dict[str, tuple[str, ...]] | None = None
) -> bool:
    """Call ``call(**values)`` and check the property; True when the call worked, False when it refused."""
    aliases = aliases or {}
    invalid = [name for name, a in args.items() if a.valid is False]
    suspects = invalid + [name for name, a in args.items() if a.valid is None]
    values = {name: a.value for name, a in args.items()}
    try:
        with no_hang():
            call(**values)
    except FileNotFoundError as err:  # a weights file that is not there: the message names its path
        named = [n for n in suspects if isinstance(values[n], str) and values[n] in str(err)]
        assert named, f"FileNotFoundError names none of {suspects} for {values}: {err}"
        return False
    except (ValueError, TypeError) as err:
        message = str(err)
        if isinstance(err, KeyError) and not type(err).__module__.startswith("transferkit"):
            raise AssertionError(f"a bare KeyError for {values}: {message}") from err
        named = [n for n in suspects for word in (n, *aliases.get(n, ())) if word in message]
        assert suspects, f"valid arguments {values} were refused: {type(err).__name__}: {message}"
        assert named, f"{type(err).__name__} names none of {suspects} for {values}: {message}"
        return False
    assert not invalid, f"invalid {invalid} accepted: {values}"
    return True


# ------------------------------------------------------------------------------------------ build_model
BACKBONES = ["resnet18", "torchvision/resnet18", "timm/resnet18", "squeezenet1_0"]
BAD_NAMES = st.one_of(
    st.sampled_from(["", "resnet", "torchvision/", "timm/", "timm/no_such_net", "RESNET18", "/resnet18"]),
    st.text(alphabet="xyz_/-", min_size=1, max_size=8),
    st.none(),
    st.integers(),
    st.just(["resnet18"]),
)


def names(valid: list[str]) -> st.SearchStrategy:
    return arg(st.sampled_from(valid), BAD_NAMES)


BUILD = {
    "backbone": names(BACKBONES),
    "num_classes": arg(st.integers(1, 1000), st.one_of(st.integers(max_value=0), NOT_INTS)),
    "in_chans": arg(st.integers(1, 4), st.one_of(st.integers(max_value=0), NOT_INTS)),
    "pretrained": arg(
        st.just(False),
        st.one_of(
            st.sampled_from(["no_such_tag", "", "  ", "/no/such/file.pth", "missing.safetensors"]),
            st.floats(),
            st.none(),
            st.just([]),
        ),
    ),
    "out_indices": arg(
        st.none(),
        st.sampled_from(["01", 1, 1.5, True, {}, [0.5], ["0"], [None]]),
        maybe=st.lists(st.integers(-7, 7), max_size=5) | st.tuples(st.integers(0, 4)),
    ),
    "output_stride": arg(
        st.none(),
        st.one_of(st.sampled_from([0, 4, 64, -8, 12]), NOT_INTS.filter(lambda v: v is not None)),
        maybe=st.sampled_from([8, 16, 32]),
    ),
    "neck": arg(st.just("identity"), BAD_NAMES, maybe=st.sampled_from(list_necks())),
    "head": arg(st.just("linear"), BAD_NAMES, maybe=st.sampled_from(list_heads())),
    "backbone_kwargs": arg(st.sampled_from([None, {}]), st.one_of(JUNK_KWARGS, NOT_MAPPINGS)),
    "neck_kwargs": arg(st.sampled_from([None, {}]), st.one_of(PART_KWARGS, NOT_MAPPINGS)),
    "head_kwargs": arg(st.sampled_from([None, {}]), st.one_of(PART_KWARGS, NOT_MAPPINGS)),
}


@PROPERTY
@given(arguments(BUILD))
def test_build_model_works_or_names_the_bad_argument(args: dict[str, Arg]) -> None:
    def build(backbone: Any, **kwargs: Any) -> Any:
        with torch.device("meta"):  # no weights are initialised: each example takes milliseconds
            return build_model(backbone, **kwargs)

    check(build, args, aliases={"pretrained": ("weights",)})


# ------------------------------------------------------------------------------- freeze, param_groups
@pytest.fixture(scope="module")
def meta_model() -> Any:
    with torch.device("meta"):
        return build_model("resnet18", num_classes=3, pretrained=False)  # 9 blocks


FREEZE = {
    "policy": arg(
        st.sampled_from(["all", "none"]),
        st.one_of(BAD_NAMES, st.just(["all"]), st.just({"all"})),
        maybe=st.sampled_from(["last_n", "gradual"]),
    ),
    "n": arg(
        st.none(),
        st.one_of(NOT_INTS.filter(lambda v: v is not None), st.integers(max_value=-1)),
        maybe=st.integers(0, 12),
    ),  # fmt: skip
    "step": arg(st.none(), NOT_INTS.filter(lambda v: v is not None), maybe=st.integers(-2, 4)),
    "every": arg(st.none(), NOT_INTS.filter(lambda v: v is not None), maybe=st.integers(-2, 4)),
    "bn": arg(
        st.sampled_from([None, "frozen", "train", "frozen_all"]),  # None: the task's default
        st.one_of(BAD_NAMES.filter(lambda v: v is not None), st.just(["train"])),
    ),
}


@PROPERTY
@given(args=arguments(FREEZE))
def test_freeze_works_or_names_the_bad_argument(meta_model: Any, args: dict[str, Arg]) -> None:
    before = meta_model.freeze_state()
    if not check(meta_model.freeze, args, aliases={"n": ("blocks",)}):
        assert meta_model.freeze_state() == before, "a refused freeze changed the model"


FLOATS = st.floats(1e-6, 10.0)
NEGATIVE = st.one_of(st.floats(max_value=-1e-9), BAD_FLOATS, NOT_NUMBERS)
PARAM_GROUPS = {
    "lr": arg(FLOATS, st.one_of(st.floats(max_value=0.0), BAD_FLOATS, NOT_NUMBERS)),
    "layer_decay": arg(
        st.one_of(st.none(), st.floats(0.01, 1.0)),
        st.one_of(st.floats(max_value=0.0), st.floats(1.01, 1e9), BAD_FLOATS, NOT_NUMBERS.filter(bool)),
    ),
    "backbone_lr_mult": arg(st.floats(0.0, 10.0), NEGATIVE),
    "weight_decay": arg(st.floats(0.0, 1.0), NEGATIVE),
}


@PROPERTY
@given(args=arguments(PARAM_GROUPS))
def test_param_groups_work_or_name_the_bad_argument(meta_model: Any, args: dict[str, Arg]) -> None:
    groups: list[dict[str, Any]] = []
    if check(lambda **kwargs: groups.extend(meta_model.param_groups(**kwargs)), args):
        assert groups and all(math.isfinite(g["lr"]) and g["lr"] >= 0 for g in groups)


# --------------------------------------------------------------------------------------------- Trainer
@pytest.fixture(scope="module")
def tiny_model() -> Any:
    torch.manual_seed(0)
    return build_model("squeezenet1_0", num_classes=3, pretrained=False)


class _Stop:
    def on_epoch_end(self, trainer: Any) -> None:
        trainer.should_stop = True


def _sgd(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=0.1)


POSITIVE_INT = st.integers(1, 100)
NOT_INTS_OR_NONE = NOT_INTS.filter(lambda v: v is not None)
TRAINER = {
    "epochs": arg(POSITIVE_INT, st.one_of(st.integers(max_value=0), NOT_INTS)),
    "lr": arg(st.floats(1e-6, 1.0), st.one_of(st.floats(max_value=0.0), BAD_FLOATS, NOT_NUMBERS)),
    "optimizer": arg(st.sampled_from(["adamw", "adam", "sgd", _sgd]), st.one_of(BAD_NAMES, st.just(["sgd"]))),
    "weight_decay": arg(st.floats(0.0, 1.0), st.one_of(st.floats(max_value=-1e-9), BAD_FLOATS, NOT_NUMBERS)),
    "scheduler": arg(
        st.sampled_from(["cosine", "step", "onecycle", "none"]),
        st.one_of(BAD_NAMES, st.just(["cosine"]), st.just({"step"})),
    ),
    "layer_decay": arg(
        st.one_of(st.none(), st.floats(0.01, 1.0)),
        st.one_of(st.floats(max_value=0.0), st.floats(1.01, 100.0), BAD_FLOATS, NOT_NUMBERS.filter(bool)),
    ),
    "loss": arg(st.sampled_from([None, torch.nn.functional.cross_entropy]), st.sampled_from(["ce", 3, [1]])),
    "device": arg(
        st.sampled_from(["auto", "cpu", torch.device("cpu"), "cpu:0"]),
        st.one_of(st.sampled_from(["tpu", "", "gpu", "cpu:x", "CPU", "cuda:-1", "meta"]), st.floats()),
        maybe=st.sampled_from(["cuda", "cuda:0", "cuda:7", "mps", 0]),
    ),
    "precision": arg(
        st.sampled_from(["auto", "fp32", "bf16"]), st.one_of(BAD_NAMES, st.just([1])), maybe=st.just("fp16")
    ),
    "grad_accum": arg(POSITIVE_INT, st.one_of(st.integers(max_value=0), NOT_INTS)),
    "clip_grad_norm": arg(
        st.one_of(st.none(), st.floats(0.01, 10.0)),
        st.one_of(st.floats(max_value=0.0), st.just(math.nan), NOT_NUMBERS.filter(bool)),
    ),
    "cache_features": arg(st.booleans(), NOT_BOOLS),
    "checkpoint_dir": arg(
        st.sampled_from([None, "/nonexistent/transferkit-run"]), st.one_of(st.integers(), st.floats())
    ),
    "resume": arg(st.just(False), NOT_BOOLS, maybe=st.just(True)),
    "early_stopping": arg(st.none() | POSITIVE_INT, st.integers(max_value=0) | NOT_INTS_OR_NONE),
    "monitor": arg(
        st.one_of(st.none(), st.sampled_from(["val_loss", "val_acc", "train_loss"])),
        st.one_of(st.integers(), st.just(["val_loss"]), st.just(b"val_loss")),
    ),
    "restore_best": arg(st.booleans(), NOT_BOOLS),
    "progress": arg(st.booleans(), NOT_BOOLS),
    "callbacks": arg(
        st.sampled_from([None, [], [_Stop()], (_Stop(),)]), st.sampled_from([[object()], "x", 3, _Stop()])
    ),
    "seed": arg(st.none() | st.integers(-(2**31), 2**31), st.floats() | st.text(max_size=3) | st.booleans()),
    "backbone_lr_mult": arg(st.floats(0.0, 10.0), NEGATIVE),
    "compile": arg(st.booleans(), NOT_BOOLS),
    "cache_budget": arg(st.integers(0, 2**40), st.one_of(st.integers(max_value=-1), NOT_INTS)),
    "cache_dir": arg(st.sampled_from([None, "/nonexistent/transferkit-cache"]), st.integers() | st.just([])),
}


@PROPERTY
@given(args=arguments(TRAINER))
def test_trainer_arguments_work_or_name_the_bad_one(tiny_model: Any, args: dict[str, Arg]) -> None:
    check(lambda **kwargs: Trainer(tiny_model, **kwargs), args, aliases={"callbacks": ("callback",)})


# ------------------------------------------------------------------------------------ command line
FREEZE_TEXT = st.one_of(
    st.text(max_size=12),
    st.builds(
        lambda policy, numbers: ":".join([policy, *numbers]),
        st.sampled_from(["all", "none", "last_n", "gradual", "LAST_N", "frozen", ""]),
        st.lists(st.integers(-3, 20).map(str) | st.sampled_from(["", "x", "1.5", " 2"]), max_size=4),
    ),
)


@PROPERTY
@given(FREEZE_TEXT)
def test_parse_freeze_gives_a_policy_or_a_usage_error(text: str) -> None:
    try:
        spec = parse_freeze(text)
    except argparse.ArgumentTypeError as err:
        assert str(err), "an empty usage error"
        return
    assert spec.policy in ("all", "none", "last_n", "gradual")
    assert all(isinstance(v, int) for v in spec.kwargs.values())


@PROPERTY
@given(
    st.text(max_size=16) | st.sampled_from(["true", "False", "no", "IMAGENET1K_V2", "x.pth", "/a/b.pt", "~"])
)
def test_parse_pretrained_gives_a_value_or_a_usage_error(text: str) -> None:
    try:
        value = parse_pretrained(text)
    except argparse.ArgumentTypeError as err:
        assert "does not exist" in str(err)
        return
    assert isinstance(value, (bool, str))


def test_parse_pretrained_with_an_unknown_home_directory_is_a_usage_error() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_pretrained("~no_such_user_here/weights.pth")


TOKENS = st.sampled_from(
    ["train", "eval", "predict", "list", "demo", "backbones", "heads", "--data", "--backbone", "--neck",
     "--head", "--pretrained", "--freeze", "--epochs", "--lr", "--batch-size", "--image-size", "--out",
     "--seed", "--device", "--model", "--top-k", "--resume", "--overwrite", "--quick", "--help", "--version",
     "0", "-1", "3", "1e-3", "nan", "abc", "last_n:2", "gradual:0:1:1", "false", "resnet18", "/nonexistent",
     "", "-", "--", "=", "--epochs=0", "--lr=-1"]
)  # fmt: skip
ARGV = st.lists(st.one_of(TOKENS, st.text(max_size=6)), max_size=8)


@PROPERTY
@given(ARGV)
def test_the_command_line_parser_parses_or_raises_its_usage_error(argv: list[str]) -> None:
    out = io.StringIO()
    try:
        with no_hang(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            build_parser().parse_args(argv)
    except UsageError as err:
        assert str(err), f"an empty usage error for {argv}"
    except SystemExit as exit:  # --help and --version print and exit 0
        assert exit.code in (0, None), f"exit {exit.code} for {argv}: {out.getvalue()}"
