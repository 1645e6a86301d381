"""Every code block in README.md and docs/*.md runs, and the docs stay in step with the code.

The docs show real use: ``pretrained=True`` and data folders such as ``hymenoptera_data/``. The tests
make that real use work offline instead of editing what the docs say:

- Pretrained weights: `weights_home` writes, at the exact paths torchvision and timm look up (the torch
  hub cache under ``$TORCH_HOME`` and the Hugging Face hub cache), state_dicts saved from randomly
  initialised models; `offline_weights` points both caches there. ``pretrained=True`` then loads them
  through the library's real code path (`test_offline_weights_go_through_the_real_loading_path`).
- Data: `doc_env` runs each file's blocks in a fresh working directory holding tiny synthetic sets
  under the documented names (``hymenoptera_data/`` with ``ants`` and ``bees``, ``segmentation_data/``).
- Small settings, the only departures from the text: epoch counts above 2 become 2 (`shrink_epochs`);
  the folder loaders use 32 px images unless a block asks for a size (`SMALL_IMAGE_SIZE`), so no block
  trains at 224 px; ``transferkit demo`` runs with ``--quick``.

Python blocks of one file run in order in one namespace. Shell blocks: ``transferkit ...`` lines run
through ``transferkit.cli.main``; ``python examples/...`` and ``torchrun ... examples/...`` lines are
parsed by the example's own argument parser (tests/test_examples.py runs every example); ``pip`` and
``pytest`` lines are not run. Any other command fails the test, so no block goes unchecked.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import re
import shlex
import shutil
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import pytest
import torch

import transferkit
from transferkit import Trainer, TransferModel, build_model, cli, data, tasks, viz
from transferkit import interpret as interpret_package
from transferkit.models.backbones import BACKBONES
from transferkit.models.heads import HEADS
from transferkit.models.necks import NECKS
from transferkit.tasks import metrics

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = ROOT / "examples"
SMALL_IMAGE_SIZE = 32
MAX_EPOCHS = 2

# The models whose pretrained weights the docs load; a block that needs another one fails with
# PretrainedUnavailableError naming it (add it here).
TORCHVISION_WEIGHTS = ("resnet18",)
TIMM_WEIGHTS = ("convnext_atto", "vit_tiny_patch16_224")
FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"
_WEIGHTS_HOME: list[Path] = []


# ------------------------------------------------------------------------------------------ reading


def code_blocks(path: Path) -> list[tuple[str, int, str]]:
    """``(language, first line number, code)`` of every fenced block in a Markdown file."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(`{3,})\s*([\w-]*)", lines[i])
        if opening:
            fence, language, start = opening[1], opening[2], i + 1
            i += 1
            while i < len(lines) and not lines[i].startswith(fence):
                i += 1
            if i == len(lines):
                raise ValueError(f"{path.name}:{start}: unclosed code block")
            blocks.append((language, start + 1, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return blocks


def shell_commands(code: str) -> list[list[str]]:
    """The commands of a shell block as argument lists (comments dropped, ``\\`` continuations joined)."""
    joined = re.sub(r"\\\n", " ", code)
    return [words for words in (shlex.split(line, comments=True) for line in joined.splitlines()) if words]


def shrink_epochs(code: str) -> str:
    """Caps epoch counts (``epochs=10``, ``num_epochs = 25``, ``--epochs 10``) at `MAX_EPOCHS`."""

    def cap(match: re.Match[str]) -> str:
        return f"{match[1]}{min(int(match[2]), MAX_EPOCHS)}"

    return re.sub(r"(\b(?:num_)?epochs\s*=\s*|--epochs[ =])(\d+)\b", cap, code)


def load_example(name: str) -> ModuleType:
    """Imports ``examples/<name>`` as a module (the scripts are not a package)."""
    path = EXAMPLES / name
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Runs on one intra-op thread: at these tiny sizes a second thread costs more than it gives, and on a
    busy machine OpenMP threads that wait for each other multiply the time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def weights_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch hub cache and a Hugging Face hub cache with weights for the models the docs load.

    The files hold state_dicts of randomly initialised torchvision / timm models, written where the
    libraries look: ``torch/hub/checkpoints/<basename of the weights URL>`` and
    ``hf/models--<org>--<repo>/snapshots/<commit>/model.safetensors`` with ``refs/main`` naming the commit.
    """
    import timm
    import torchvision.models as tvm
    from huggingface_hub import try_to_load_from_cache
    from safetensors.torch import save_file

    if _WEIGHTS_HOME:  # tests/test_examples.py shares this fixture: write the files once per session
        return _WEIGHTS_HOME[0]
    root = tmp_path_factory.mktemp("weights")
    checkpoints = root / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in TORCHVISION_WEIGHTS:
        url = tvm.get_model_weights(name).DEFAULT.url
        torch.save(
            tvm.get_model(name, weights=None).state_dict(), checkpoints / os.path.basename(urlparse(url).path)
        )
    for name in TIMM_WEIGHTS:
        repo = timm.create_model(name, pretrained=False).pretrained_cfg["hf_hub_id"]
        cached = root / "hf" / f"models--{repo.replace('/', '--')}"
        (cached / "refs").mkdir(parents=True)
        (cached / "refs" / "main").write_text(FAKE_COMMIT)
        (cached / "snapshots" / FAKE_COMMIT).mkdir(parents=True)
        state = {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
        save_file(state, cached / "snapshots" / FAKE_COMMIT / "model.safetensors")
        found = try_to_load_from_cache(repo, "model.safetensors", cache_dir=root / "hf")
        assert isinstance(found, str), f"the fake Hugging Face cache for {repo} is not where the hub looks"
    _WEIGHTS_HOME.append(root)
    return root


@pytest.fixture
def offline_weights(weights_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points the torch hub and Hugging Face caches at `weights_home`, and keeps the hub offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("TORCH_HOME", str(weights_home / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(weights_home / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return weights_home


def _small_images(loaders: Any) -> Any:
    @functools.wraps(loaders)
    def small(*args: Any, image_size: int | None = None, **kwargs: Any) -> Any:
        return loaders(*args, image_size=image_size or SMALL_IMAGE_SIZE, **kwargs)

    return small


@pytest.fixture
def doc_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline_weights: Path) -> Path:
    """A working directory with the documented data folders, offline weights and small image sizes.

    Registries are restored afterwards, so a block that registers a head leaves no trace.
    """
    monkeypatch.chdir(tmp_path)
    root = data.make_shapes_folder(
        tmp_path / "hymenoptera_data", num_classes=2, per_class={"train": 4, "val": 2}, image_size=32
    )
    for split in ("train", "val"):
        for shape, insect in (("circle", "ants"), ("square", "bees")):
            (root / split / shape).rename(root / split / insect)
    data.make_shapes_segmentation_folder(
        tmp_path / "segmentation_data", per_split={"train": 4, "val": 2}, image_size=32
    )
    # The CLI reaches these through its task objects, which look them up on transferkit.data when called.
    for name in ("image_folder_loaders", "segmentation_folder_loaders"):
        monkeypatch.setattr(data, name, _small_images(getattr(data, name)))
    for registry in (BACKBONES, NECKS, HEADS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _HubIntoCache)  # push_to_hub lands in the local cache
    return tmp_path


class _HubIntoCache:
    """Stands in for huggingface_hub.HfApi: an upload becomes a snapshot in the (offline) Hub cache."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token

    def create_repo(self, repo_id: str, private: bool = False, exist_ok: bool = False) -> str:
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id: str, folder_path: str, commit_message: str) -> None:
        from huggingface_hub import constants

        repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(folder_path, repo / "snapshots" / FAKE_COMMIT)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(FAKE_COMMIT)


# ------------------------------------------------------------------------------------------ running


def _files_with(language: str) -> list[Path]:
    return [path for path in DOC_FILES if any(lang == language for lang, _, _ in code_blocks(path))]


@pytest.mark.parametrize("path", _files_with("python"), ids=lambda p: p.name)
def test_python_blocks_run(path: Path, doc_env: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for language, line, code in code_blocks(path):
        if language != "python":
            continue
        try:
            exec(compile(shrink_epochs(code), f"{path.name}:{line}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(
                f"the python block at {path.name}:{line} failed:\n{code}\n{traceback.format_exc()}"
            ) from err


def _run_shell_command(words: list[str], where: str) -> None:
    if words[0] == "transferkit":
        argv = shlex.split(shrink_epochs(shlex.join(words[1:])))
        if argv[:1] == ["demo"] and "--quick" not in argv:
            argv.append("--quick")
        status = cli.main(argv)
        assert status == 0, f"{where}: `{shlex.join(words)}` exited with {status}"
    elif any(w.startswith("examples/") and w.endswith(".py") for w in words):
        script = next(w for w in words if w.startswith("examples/"))
        assert words[0] in ("python", "torchrun"), f"{where}: run examples with python or torchrun"
        options = words[words.index(script) + 1 :]
        load_example(Path(script).name).parse_args(options)  # exits (fails) on an unknown option
    elif words[0] not in ("pip", "pytest"):
        raise AssertionError(f"{where}: no rule in tests/test_docs.py checks `{shlex.join(words)}`")


@pytest.mark.parametrize("path", _files_with("bash"), ids=lambda p: p.name)
def test_shell_blocks_run(path: Path, doc_env: Path) -> None:
    for language, line, code in code_blocks(path):
        if language == "bash":
            for words in shell_commands(code):
                _run_shell_command(words, f"{path.name}:{line}")


def test_every_block_has_a_language() -> None:
    """Unmarked blocks would escape the checks above: runnable code says python or bash, the rest text."""
    unmarked = [
        f"{path.name}:{line}"
        for path in DOC_FILES
        for language, line, _ in code_blocks(path)
        if language not in ("python", "bash", "text")
    ]
    assert not unmarked, f"code blocks without python/bash/text: {unmarked}"


def test_offline_weights_go_through_the_real_loading_path(offline_weights: Path) -> None:
    """``pretrained=True`` under the fixture loads exactly the files it wrote, for torchvision and timm."""
    import timm
    import torchvision.models as tvm
    from safetensors.torch import load_file

    url = tvm.get_model_weights("resnet18").DEFAULT.url
    saved = torch.load(offline_weights / "torch/hub/checkpoints" / os.path.basename(url), weights_only=True)
    model = build_model("resnet18", num_classes=2, pretrained=True)
    assert torch.equal(model.get_submodule("backbone.body.conv1").weight, saved["conv1.weight"])
    assert torch.equal(
        model.get_submodule("backbone.body.layer4.1.bn2").running_var, saved["layer4.1.bn2.running_var"]
    )

    repo = timm.create_model("convnext_atto", pretrained=False).pretrained_cfg["hf_hub_id"]
    files = offline_weights / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots" / FAKE_COMMIT
    state = load_file(files / "model.safetensors")
    timm_model = build_model("timm/convnext_atto", num_classes=2, pretrained=True)
    stem = [p for n, p in timm_model.backbone.named_parameters() if n.endswith("stem_0.weight")]
    assert len(stem) == 1 and torch.equal(stem[0], state["stem.0.weight"])


def test_pretrained_true_fails_fast_without_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the fixture's files the same call is the documented offline error (the docs promise it)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("transferkit.models.weights.reachable", lambda url: False)  # as with no network
    with pytest.raises(transferkit.PretrainedUnavailableError, match="pretrained=False"):
        build_model("resnet18", num_classes=2, pretrained=True)


# --------------------------------------------------------------------------------------- in step


def _api_text() -> str:
    return (ROOT / "docs" / "api.md").read_text()


@pytest.mark.parametrize(
    "module", [transferkit, data, metrics, viz, tasks, interpret_package], ids=lambda m: m.__name__
)
def test_api_reference_names_every_public_name(module: ModuleType) -> None:
    missing = [name for name in module.__all__ if f"`{name}" not in _api_text()]
    assert not missing, f"docs/api.md does not mention {module.__name__}.{missing}"


def test_api_reference_lists_every_model_member_and_argument() -> None:
    members = [name for name in vars(TransferModel) if not name.startswith("_") and name != "forward"]
    arguments = [
        *inspect.signature(build_model).parameters,
        *inspect.signature(transferkit.load_model).parameters,
    ]
    text = _api_text()
    missing = [m for m in members if f"`{m}" not in text] + [
        a for a in arguments if not re.search(rf"\b{a}\b", text)
    ]
    assert not missing, f"docs/api.md does not mention {missing}"


def test_trainer_arguments_table_matches_the_signature() -> None:
    text = (ROOT / "docs" / "trainer.md").read_text()
    section = text.split("## Arguments", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    actual = [name for name in inspect.signature(Trainer).parameters if name != "model"]
    assert sorted(documented) == sorted(actual)
    missing_in_api = [name for name in actual if f"{name}=" not in _api_text()]
    assert not missing_in_api, f"the Trainer signature in docs/api.md lacks {missing_in_api}"


def _cli_synopsis(text: str) -> dict[str, str]:
    """The lines of the first text block in docs/cli.md, by the subcommand they describe."""
    synopsis: dict[str, str] = {}
    command = ""
    for line in next(
        code for lang, _, code in code_blocks(ROOT / "docs" / "cli.md") if lang == "text"
    ).splitlines():
        if line.startswith("transferkit "):
            command = line.split()[1]
        synopsis[command] = synopsis.get(command, "") + line + "\n"
    return synopsis


def test_cli_page_matches_the_parser() -> None:
    """Every subcommand has a section, every option is in its synopsis or section, and no other is."""
    text = (ROOT / "docs" / "cli.md").read_text()
    synopsis = _cli_synopsis(text)
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a.choices, dict))
    problems = []
    for command, parser in subparsers.choices.items():
        if f"\n## {command}\n" not in text:
            problems.append(f"no section '## {command}'")
            continue
        section = text.split(f"\n## {command}\n", 1)[1].split("\n## ", 1)[0]
        described = synopsis.get(command, "") + section
        options = {
            o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"
        }
        problems += [f"{command} {o} is not documented" for o in sorted(options) if o not in described]
        shown = set(re.findall(r"--[a-z][\w-]*", synopsis.get(command, "")))
        problems += [f"{command} {o} is documented but does not exist" for o in sorted(shown - options)]
    assert not problems, problems


def test_readme_and_index_point_to_every_example() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts, "no examples found"
    for page in (ROOT / "README.md", ROOT / "docs" / "index.md"):
        text = page.read_text()
        assert [s for s in scripts if f"examples/{s}" not in text] == [], f"{page.name} misses an example"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_resolve() -> None:
    broken = []
    for page in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = (page.parent / file).resolve() if file else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and resolved.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", resolved.read_text(), flags=re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, f"broken links: {broken}"


def test_readme_keeps_the_two_commands_and_the_intended_use() -> None:
    text = (ROOT / "README.md").read_text()
    assert "pip install -e . && transferkit demo" in text
    assert 'pip install -e ".[test]" && pytest' in text
    assert 'build_model("resnet18", neck="identity", head="linear", num_classes=2, pretrained=True)' in text


def test_shrink_epochs_only_touches_epoch_counts() -> None:
    code = 'Trainer(model, epochs=10, lr=1e-3)\nnum_epochs = 25\nrun("--epochs 7 --image-size 224")\nepochs=1'
    assert shrink_epochs(code) == (
        'Trainer(model, epochs=2, lr=1e-3)\nnum_epochs = 2\nrun("--epochs 2 --image-size 224")\nepochs=1'
    )


def test_faults_page_counts_its_rows_and_names_real_tests() -> None:
    text = (Path(__file__).parents[1] / "docs" / "faults.md").read_text()
    rows = 0
    for number, tests in re.findall(r"^\| (\d+(?:-\d+)?) \|.*\| ([^|]*) \|$", text, flags=re.M):
        first, _, last = number.partition("-")
        assert int(first) == rows + 1, f"row {number} after row {rows}"
        rows = int(last or first)
        for name in re.findall(r"test_\w+\.py", tests):
            assert (Path(__file__).parent / name).is_file(), f"row {number}: no {name}"
    assert f"The tables hold **{rows} distinct faults and bad inputs**" in text
