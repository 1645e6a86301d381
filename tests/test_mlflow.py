"""MLflowLogger against a real MLflow store in a temporary folder, read back through MlflowClient."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from transferkit import Trainer, build_model, load_model
from transferkit.training import MLflowLogger

mlflow_tracking = pytest.importorskip("mlflow.tracking")


def _trainer(callbacks: list, epochs: int = 3, **kwargs) -> tuple[Trainer, dict[str, DataLoader]]:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=2, pretrained=False)
    model.freeze(policy="last_n", n=1)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(8, 3, 32, 32, generator=g), torch.tensor([0, 1] * 4))
    loaders = {"train": DataLoader(data, batch_size=4), "val": DataLoader(data, batch_size=8)}
    trainer = Trainer(model, epochs=epochs, lr=0.05, progress=False, callbacks=callbacks, **kwargs)
    return trainer, loaders


def _steps_and_values(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_the_run_holds_every_epoch_the_params_and_the_model_folder(tmp_path: Path) -> None:
    logger = MLflowLogger(tmp_path / "mlruns", experiment="ab", run_name="first", params={"batch_size": 4})
    # monitor="lr": the best epoch is the first (the cosine schedule's highest rate), so the model fit ends
    # with (restore_best) is not the last epoch's, and the logged folder must hold the restored weights
    trainer, loaders = _trainer([logger], monitor="lr")
    history = trainer.fit(loaders)
    assert trainer.best.epoch == 0

    client = mlflow_tracking.MlflowClient(logger.tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "first"
    assert client.get_experiment(run.info.experiment_id).name == "ab"
    for key in ("train_loss", "val_loss", "val_acc", "lr", "seconds", "trainable_blocks"):
        expected = [(row["epoch"], pytest.approx(float(row[key]), rel=1e-12)) for row in history]
        assert _steps_and_values(client, logger.run_id, key) == expected, key
    assert "epoch" not in run.data.metrics  # it is the step
    params = run.data.params
    assert {k: params[k] for k in ("epochs", "lr", "optimizer", "scheduler", "recipe", "batch_size")} == {
        "epochs": "3",
        "lr": "0.05",
        "optimizer": "adamw",
        "scheduler": "cosine",
        "recipe": "finetune",
        "batch_size": "4",
    }
    model_params = ("backbone", "head", "num_classes", "freeze", "freeze_n", "weight_decay")
    assert [params[k] for k in model_params] == ["torchvision/resnet18", "linear", "2", "last_n", "1", "0.01"]

    # the model folder: plain files, loaded without MLflow's model flavours, the weights fit ended with
    folder = Path(client.download_artifacts(logger.run_id, "model", str(tmp_path / "downloaded")))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded, model = load_model(folder).eval(), trainer.model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))

    report = tmp_path / "report.html"
    report.write_text("<html></html>")
    logger.log_artifact(report, "reports")
    assert [f.path for f in client.list_artifacts(logger.run_id, "reports")] == ["reports/report.html"]
    with pytest.raises(FileNotFoundError, match="neither a file nor a folder"):
        logger.log_artifact(tmp_path / "missing.html")


def test_a_resumed_fit_continues_the_same_run(tmp_path: Path) -> None:
    class Interrupt:
        def on_epoch_end(self, trainer: Trainer) -> None:
            if trainer.epoch == 1:
                raise KeyboardInterrupt

    store, checkpoints = tmp_path / "mlruns", tmp_path / "ckpt"
    first = MLflowLogger(store, log_model=False)
    trainer, loaders = _trainer([first, Interrupt()], checkpoint_dir=checkpoints)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(loaders)
    client = mlflow_tracking.MlflowClient(first.tracking_uri)
    assert client.get_run(first.run_id).info.status == "KILLED"  # not left RUNNING
    resumed = MLflowLogger(store, log_model=False)
    trainer, loaders = _trainer([resumed], checkpoint_dir=checkpoints, resume=True)
    history = trainer.fit(loaders)

    assert resumed.run_id == first.run_id
    client = mlflow_tracking.MlflowClient(resumed.tracking_uri)
    assert len(client.search_runs([client.get_run(resumed.run_id).info.experiment_id])) == 1
    expected = [(row["epoch"], pytest.approx(row["val_loss"], rel=1e-12)) for row in history]
    assert _steps_and_values(client, resumed.run_id, "val_loss") == expected  # each epoch once
    assert client.get_run(resumed.run_id).info.status == "FINISHED"


def test_a_fit_that_fails_ends_its_run_failed_and_the_error_goes_on(tmp_path: Path) -> None:
    class Diverge:
        def on_epoch_end(self, trainer: Trainer) -> None:
            if trainer.epoch == 1:
                raise FloatingPointError("loss is nan")

    logger = MLflowLogger(tmp_path / "mlruns")
    trainer, loaders = _trainer([logger, Diverge()])
    with pytest.raises(FloatingPointError, match="loss is nan"):
        trainer.fit(loaders)
    client = mlflow_tracking.MlflowClient(logger.tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED"
    assert [step for step, _ in _steps_and_values(client, logger.run_id, "val_loss")] == [0, 1]
    assert not client.list_artifacts(logger.run_id)  # no model is logged for a fit that failed


def test_without_mlflow_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    with pytest.raises(ImportError, match=r'pip install "transferkit\[mlflow\]"'):
        MLflowLogger()


def test_only_rank_0_logs_and_never_into_a_linked_folder(tmp_path: Path) -> None:
    logger = MLflowLogger(tmp_path / "mlruns")
    rank_1 = SimpleNamespace(is_main=False, history=[{"epoch": 0, "train_loss": 1.0}])
    for event in (logger.on_fit_start, logger.on_epoch_end, logger.on_fit_end):
        event(rank_1)
    logger.log_artifact(tmp_path / "missing.html")  # nothing to do on rank 1
    assert logger.run_id is None and not (tmp_path / "mlruns").exists()

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError, match="symbolic link"):
        MLflowLogger(tmp_path / "linked").on_fit_start(SimpleNamespace(is_main=True))
    assert not list((tmp_path / "elsewhere").iterdir())


def test_the_store_defaults_to_mlruns_unless_the_environment_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert MLflowLogger().tracking_uri == (Path.cwd() / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert MLflowLogger().tracking_uri == "sqlite:///elsewhere.db"
    assert MLflowLogger("http://localhost:5000").tracking_uri == "http://localhost:5000"
    with pytest.raises(RuntimeError, match="no MLflow run yet"):
        MLflowLogger().log_artifact(tmp_path)
    with pytest.raises(ValueError, match="experiment"):
        MLflowLogger(experiment=" ")


def test_train_log_mlflow_keeps_its_store_in_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transferkit.cli import build_parser
    from transferkit.cli.folder import entries_to_replace
    from transferkit.cli.runs import _trainer, _write_meta

    assert build_parser().parse_args(["train", "--log", "mlflow"]).log == "mlflow"
    out = tmp_path / "run"
    model = build_model("resnet18", num_classes=2, pretrained=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def logger() -> MLflowLogger:
        trainer = _trainer(model, out, epochs=1, lr=None, device="cpu", seed=0, mlflow={"batch_size": 4})
        (found,) = [cb for cb in trainer.callbacks.callbacks if isinstance(cb, MLflowLogger)]
        return found

    assert logger().tracking_uri == (out / "mlruns").absolute().as_uri()
    assert (logger().run_name, logger().params) == ("run", {"batch_size": 4})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert logger().tracking_uri == "http://localhost:5000"

    # --overwrite replaces a run's mlruns/ tree, but refuses one holding a symbolic link
    (out / "mlruns" / "1" / "abc" / "metrics").mkdir(parents=True)
    (out / "mlruns" / "1" / "meta.yaml").write_text("name: transferkit\n")
    _write_meta(out, {"log": "mlflow", "status": "done", "transferkit_version": "0.1.0"})
    assert [p.name for p in entries_to_replace(out)] == ["mlruns", "transferkit.json"]
    (out / "mlruns" / "1" / "abc" / "metrics" / "val_loss").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError, match=r"mlruns/1/abc/metrics/val_loss \(a symbolic link\)"):
        entries_to_replace(out)
