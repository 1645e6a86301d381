"""`MLflowLogger`: a Trainer callback that records a run in an MLflow tracking store.

Beside `CSVLogger` and `TensorBoard` (`transferkit.training.callbacks`): the Trainer's settings and the
model's architecture as params, every epoch's history values as metrics at ``step=epoch``, and the saved
model folder as an artifact, read back with plain file access (no MLflow model flavour). It talks to the
store through ``mlflow.tracking.MlflowClient`` only, never through MLflow's global active run, which
stays the user's. mlflow is an optional extra (``pip install
"transferkit[mlflow]"``, which installs the light ``mlflow-skinny``), imported when a logger is made.
"""

from __future__ import annotations

import numbers
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from ..atomic import refuse_symlink

__all__ = ["DEFAULT_STORE", "MODEL_ARTIFACT", "MLflowLogger", "run_params", "store_uri"]

DEFAULT_STORE = "mlruns"
"""The folder store of ``MLflowLogger()`` (under the working directory) when neither ``tracking_uri`` nor
the ``MLFLOW_TRACKING_URI`` environment variable names another."""

MODEL_ARTIFACT = "model"
"""The artifact path of the saved model folder (``config.json`` and ``model.safetensors``)."""

_FILE_STORE_SWITCH = "MLFLOW_ALLOW_FILE_STORE"  # MLflow 3 refuses folder stores unless it is "true"
_PARAMS_PER_CALL = 100  # MLflow's limit on the params of one log_batch
_PARAM_LENGTH = 6000  # MLflow's limit on a param value's length


class MLflowLogger:
    """Records training in MLflow: settings as params, each epoch's values as metrics, the model folder.

    When ``fit`` starts (``on_fit_start``) it opens a run in ``experiment`` (created when the store lacks
    it) and logs as params the Trainer's settings (epochs, learning rate, optimizer, weight decay,
    scheduler, precision, recipe and its plan, ...; `run_params`), the model's architecture from
    ``model.config`` (backbone, neck, head, num_classes, pretrained), its freeze policy, and ``params``.
    After every epoch each number of the history row (``train_loss``, ``val_loss``, ``val_acc``, ``lr``,
    ``seconds``, ...) is logged at ``step=epoch``; the rows of a recipe's probe phase, which trains before
    the callbacks run, are logged at the start. When ``fit`` ends, with the weights it ends with, the model
    folder ``model.save`` writes is logged under the artifact path `MODEL_ARTIFACT` and the run ends
    ``FINISHED``. `log_artifact` adds files afterwards (a report, a plot). Reading the run back needs no
    MLflow model flavour: ``MlflowClient(tracking_uri).download_artifacts(run_id, "model", dst)`` gives a
    folder for `transferkit.load_model`.

    The store is ``tracking_uri`` when given, else the ``MLFLOW_TRACKING_URI`` environment variable, else
    the folder `DEFAULT_STORE` (``./mlruns``). A folder is MLflow's file store: plain files, offline, no
    server or database. MLflow 3 keeps that store in maintenance mode behind the environment variable
    ``MLFLOW_ALLOW_FILE_STORE``, which the logger sets to ``true`` in its own process when it opens a
    folder store (unless it is set already); set it where you read the folder too, e.g.
    ``MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri mlruns``. Any other tracking URI works as
    MLflow takes it: a server (``http://host:5000``), or ``sqlite:///mlflow.db`` (needs SQLAlchemy and
    Alembic, as the full ``mlflow`` package brings, and takes some seconds to create).

    Only rank 0 logs under torchrun. ``state_dict()`` holds the run's id, so a resumed ``fit``
    (``resume=True``, this logger at the same position in ``callbacks``) continues the same MLflow run
    from the next epoch; a checkpoint whose run the store lacks gets a new run, with a warning. Another
    ``fit`` without resuming opens a new run. A fit that raises ends its run ``FAILED`` (``KILLED`` on
    Ctrl-C); resuming it sets it ``RUNNING`` again.

    Args:
        tracking_uri: A folder (a local file store) or an MLflow tracking URI; None: as said above.
        experiment: The experiment's name.
        run_name: The run's name (None: MLflow makes one up).
        log_model: Log the saved model folder when ``fit`` ends.
        params: More params to log with the Trainer's, e.g. ``{"batch_size": 32}`` (the Trainer does not
            know its loaders' batch size); these win over the Trainer's of the same name.

    Attributes:
        run_id: The MLflow run's id, once ``fit`` opened it (None before that, and on ranks other than 0).
        tracking_uri: The store, as a URI (a folder becomes an absolute ``file://`` URI).

    Raises:
        ImportError: mlflow is not installed (the message gives ``pip install "transferkit[mlflow]"``).
        ValueError: An empty ``experiment`` name.
        FileExistsError: At the start of ``fit``, a folder store that is a symbolic link.

    Examples:
        >>> from mlflow.tracking import MlflowClient  # doctest: +SKIP
        >>> logger = MLflowLogger("runs/mlruns", experiment="ants_bees")  # doctest: +SKIP
        >>> history = Trainer(model, epochs=3, callbacks=[logger]).fit(loaders)  # doctest: +SKIP
        >>> client = MlflowClient(logger.tracking_uri)  # doctest: +SKIP
        >>> [m.step for m in client.get_metric_history(logger.run_id, "val_acc")]  # doctest: +SKIP
        [0, 1, 2]
        >>> load_model(client.download_artifacts(logger.run_id, "model", "downloaded"))  # doctest: +SKIP
    """

    def __init__(
        self,
        tracking_uri: str | os.PathLike[str] | None = None,
        *,
        experiment: str = "transferkit",
        run_name: str | None = None,
        log_model: bool = True,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        _require_mlflow()
        if not isinstance(experiment, str) or not experiment.strip():
            raise ValueError(f"experiment must be a non-empty name, got {experiment!r}")
        self.tracking_uri = store_uri(tracking_uri)
        self.experiment, self.run_name, self.log_model = experiment, run_name, log_model
        self.params = dict(params or {})
        self.run_id: str | None = None
        self._resumed: str | None = None  # the run of a checkpoint (load_state_dict), for the next fit
        self._client: Any = None
        self._is_main = True

    # ------------------------------------------------------------------------------------- events
    def on_fit_start(self, trainer: Any) -> None:
        self._is_main = trainer.is_main
        if not trainer.is_main:
            return
        client, resumed = self._open(), self._resumed
        self._resumed = None
        if resumed is not None and self._exists(resumed):
            self.run_id = resumed
            client.update_run(resumed, status="RUNNING")
            return  # its params and the epochs before the checkpoint are logged already
        if resumed is not None:
            warnings.warn(
                f"the checkpoint's MLflow run {resumed} is not in {self.tracking_uri} (or was deleted); "
                "the resumed fit logs to a new run",
                UserWarning,
                stacklevel=3,
            )
        run = client.create_run(self._experiment_id(), run_name=self.run_name)
        self.run_id = run.info.run_id
        self._log_params({**run_params(trainer), **self.params})
        for row in trainer.history:  # a recipe's probe phase, trained before the callbacks run
            self._log_row(row)

    def on_epoch_end(self, trainer: Any) -> None:
        if trainer.is_main and self.run_id is not None:
            self._log_row(trainer.history[-1])

    def on_fit_end(self, trainer: Any) -> None:
        if not trainer.is_main or self.run_id is None:
            return
        if self.log_model:
            with tempfile.TemporaryDirectory(prefix="transferkit-mlflow-") as tmp:
                folder = trainer.model.save(Path(tmp) / MODEL_ARTIFACT)
                self._open().log_artifacts(self.run_id, str(folder), MODEL_ARTIFACT)
        self._open().set_terminated(self.run_id, "FINISHED")

    def on_exception(self, trainer: Any, error: BaseException) -> None:
        if trainer.is_main and self.run_id is not None:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            self._open().set_terminated(self.run_id, status)

    def state_dict(self) -> dict[str, Any]:
        """``{"run_id": ...}``: the run a resumed fit continues."""
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes what `state_dict` returned; the next ``fit`` continues that run."""
        self._resumed = state.get("run_id")

    # ----------------------------------------------------------------------------------- artifacts
    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Adds a file, or a folder's files, to the run of the last ``fit`` (finished runs take them too).

        Does nothing on ranks other than 0.

        Args:
            path: The file or folder.
            artifact_path: The folder in the run's artifacts (None: the top).

        Raises:
            RuntimeError: No ``fit`` has opened a run yet.
            FileNotFoundError: ``path`` is neither a file nor a folder.

        Examples:
            >>> logger.log_artifact("runs/ab/report.html")  # doctest: +SKIP
        """
        if not self._is_main:
            return
        if self.run_id is None:
            raise RuntimeError(
                "MLflowLogger.log_artifact: no MLflow run yet; call it after Trainer(..., "
                "callbacks=[logger]).fit(...) has started one"
            )
        source = Path(path)
        if source.is_dir():
            self._open().log_artifacts(self.run_id, str(source), artifact_path)
        elif source.is_file():
            self._open().log_artifact(self.run_id, str(source), artifact_path)
        else:
            raise FileNotFoundError(f"MLflowLogger.log_artifact: {path} is neither a file nor a folder")

    # ------------------------------------------------------------------------------------- helpers
    def _open(self) -> Any:
        """The client of the store (made once), after the checks a folder store needs."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            folder = _local_store(self.tracking_uri)
            if folder is not None:
                refuse_symlink(folder, "MLflow store folder")
                os.environ.setdefault(_FILE_STORE_SWITCH, "true")
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _experiment_id(self) -> str:
        client = self._open()
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            return str(client.create_experiment(self.experiment))
        if found.lifecycle_stage != "active":
            raise ValueError(
                f"the MLflow experiment {self.experiment!r} in {self.tracking_uri} is deleted; restore it "
                "(mlflow experiments restore) or pass another experiment name"
            )
        return str(found.experiment_id)

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self._open().get_run(run_id)
        except MlflowException:
            return False
        return bool(run.info.lifecycle_stage == "active")

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, _param_text(value)) for key, value in params.items() if value is not None]
        for start in range(0, len(entries), _PARAMS_PER_CALL):
            self._open().log_batch(self.run_id, params=entries[start : start + _PARAMS_PER_CALL])

    def _log_row(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now = int(row["epoch"]), int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in _numbers(row)]
        if metrics:
            self._open().log_batch(self.run_id, metrics=metrics)


def run_params(trainer: Any) -> dict[str, Any]:
    """The params `MLflowLogger` logs for a ``fit`` about to train: the Trainer's settings, the model's
    architecture and its freeze policy (None values are left out when logged).

    Examples:
        >>> params = run_params(trainer)  # doctest: +SKIP
        >>> params["backbone"], params["freeze"], params["optimizer"]  # doctest: +SKIP
        ('torchvision/resnet18', 'last_n', 'adamw')
    """
    model, plan, options = trainer.model, trainer.plan, trainer.options
    monitor = trainer.best.monitor
    params: dict[str, Any] = {
        "epochs": trainer.epochs,
        "lr": trainer.lr,  # None: the recipe's rates, which "plan" states
        "recipe": plan.recipe if plan is not None else trainer.recipe,
        "plan": plan.describe(len(model.blocks)) if plan is not None else None,
        "optimizer": options["optimizer"],
        "weight_decay": options["weight_decay"],
        "scheduler": options["scheduler"],
        "loss": options["loss"],
        "precision": str(trainer.amp_dtype).removeprefix("torch."),
        "grad_accum": options["grad_accum"],
        "clip_grad_norm": options["clip_grad_norm"],
        "label_smoothing": options["label_smoothing"],
        "monitor": monitor,
        "early_stopping": trainer.early_stopping,
        "restore_best": options["restore_best"],
        "cache_features": trainer.cache_features,
        "seed": options["seed"],
        "device": trainer.device,
        "world_size": trainer.world_size,
        "task": model.task,
    }
    architecture = ("backbone", "neck", "head", "num_classes", "pretrained", "in_chans", "output_stride")
    params.update({key: model.config.get(key) for key in architecture})
    freeze = model.freeze_state()
    params["freeze"] = freeze["policy"]
    params.update({f"freeze_{key}": freeze.get(key) for key in ("n", "step", "every", "bn", "adapters")})
    return params


def store_uri(tracking_uri: str | os.PathLike[str] | None) -> str:
    """The tracking URI `MLflowLogger` uses: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the
    folder `DEFAULT_STORE`; a folder (a path, or a string without a URI scheme) as an absolute
    ``file://`` URI.

    Examples:
        >>> store_uri("sqlite:///mlflow.db"), store_uri("/tmp/mlruns")  # doctest: +SKIP
        ('sqlite:///mlflow.db', 'file:///tmp/mlruns')
    """
    if tracking_uri is None:
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE
    if isinstance(tracking_uri, str):
        if tracking_uri == "databricks" or len(urlparse(tracking_uri).scheme) > 1:  # 1: a drive, C:\...
            return tracking_uri
    # absolute, links kept: a folder that is a symbolic link must stay visible to the check in `_open`
    return Path(os.path.abspath(Path(tracking_uri).expanduser())).as_uri()


def _local_store(tracking_uri: str) -> Path | None:
    """The folder of a ``file:`` tracking URI (MLflow's file store), or None for any other store."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "file":
        return None
    return Path(url2pathname(parsed.path))


def _require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError as err:
        raise ImportError(
            'MLflowLogger needs mlflow, which the "mlflow" extra installs: pip install "transferkit[mlflow]"'
        ) from err


def _numbers(row: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """The row's numeric values (not the epoch: it is the step; not text such as a recipe's phase)."""
    for key, value in row.items():
        if key != "epoch" and isinstance(value, numbers.Real) and not isinstance(value, bool):
            yield key, float(value)


def _param_text(value: Any) -> str:
    """A param's value as MLflow keeps it: text (a callable by its name), cut to MLflow's limit."""
    text = getattr(value, "__name__", None) if callable(value) else None
    return (text or str(value))[:_PARAM_LENGTH]
