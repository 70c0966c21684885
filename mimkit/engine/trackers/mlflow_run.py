"""MLflow: metrics ``<tag>/<name>`` at each step, images, and the config (as ``config.json`` and, for a new MLflow
run, as flattened parameters ``train.batch_size``, ...).

The store is ``MLFLOW_TRACKING_URI`` where set (a server, a database), else a file store in the run folder
(``OUTPUT/mlruns``; MLflow 3 keeps file stores behind ``MLFLOW_ALLOW_FILE_STORE=true``, which mimkit sets for its
own default only: set it too to read the store with ``mlflow ui``). ``MLFLOW_EXPERIMENT_NAME`` names the
experiment (default ``mimkit``); the MLflow run is named after the run folder, and a resumed run continues the same
MLflow run (its id is kept in ``trackers.json``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from mimkit.engine.resume_config import flat_fields
from mimkit.engine.run_folder import MLFLOW_FOLDER
from mimkit.engine.trackers.base import Tracker, TrackerContext

DEFAULT_EXPERIMENT = "mimkit"
FILE_STORE_SWITCH = "MLFLOW_ALLOW_FILE_STORE"


@contextmanager
def _file_store_allowed() -> Iterator[None]:
    """MLflow 3 refuses to open a file store unless ``MLFLOW_ALLOW_FILE_STORE`` is true (it opens each store once
    and keeps it); allowed here for the default store only, leaving the environment as it was."""
    before = os.environ.get(FILE_STORE_SWITCH)
    os.environ.setdefault(FILE_STORE_SWITCH, "true")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(FILE_STORE_SWITCH, None)


class MlflowTracker(Tracker):
    def __init__(self, context: TrackerContext) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        self.metric, self.param, self.params_per_batch = Metric, Param, MAX_PARAMS_TAGS_PER_BATCH
        self.notes = []
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            self.client = MlflowClient(uri)
        else:
            with _file_store_allowed():
                self.client = MlflowClient((context.output / MLFLOW_FOLDER).resolve().as_uri())
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = context.remembered_run("mlflow")
        self.new_run = True
        if self.run_id is not None:
            try:
                self.client.update_run(self.run_id, status="RUNNING")
                self.new_run = False
            except MlflowException:  # the run is gone, or in another store: start a new one
                self.run_id = None
        if self.run_id is None:
            self.run_id = self.client.create_run(experiment_id, run_name=context.name).info.run_id
            context.remember_run("mlflow", self.run_id)

    def log_scalars(self, step: int, scalars: Mapping[str, float], tag: str) -> None:
        now = int(time.time() * 1000)
        metrics = [self.metric(f"{tag}/{name}", float(value), now, step) for name, value in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_image(self, step: int, name: str, image: np.ndarray) -> None:
        self.client.log_image(self.run_id, image, key=name, step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """The whole config as an artifact each invocation; as parameters once, when the MLflow run starts (MLflow
        refuses to change a parameter, and a resume may change the fields that are free to change)."""
        self.client.log_dict(self.run_id, dict(config), "config.json")
        if not self.new_run:
            return
        params = [self.param(name, str(value)) for name, value in flat_fields(dict(config)).items()]
        for start in range(0, len(params), self.params_per_batch):
            self.client.log_batch(self.run_id, params=params[start : start + self.params_per_batch])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
