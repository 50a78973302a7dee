"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) through accelerate's tracker classes, all offline.

    metrics_writer(run_dir, tracking, config, resume_step, main)    what the DPO/SFT/rm loop and ppo write to
      TrackedWriter.write(record)     metrics.jsonl as before, and each tracker at the record's step
    open_trackers(tracking, run_dir, config, resume_step)            the trackers alone (e.g. for win rates)
      Trackers.log(metrics, step) / finish()                         `Trackers()` itself logs nothing

A record `{"step": 20, "split": "eval", "loss": 0.61}` of metrics.jsonl reaches every tracker as `eval/loss` = 0.61
at step 20 (ppo's records count `iteration`s, without a split: `train/reward`). The resolved config goes to each
tracker once, as hyper-parameters with dotted keys (`loss.beta`). Only the main process opens trackers; the others
hold `Trackers()`, so loops never ask whether tracking is on.

Files, under `tracking_dir` (default `<output_dir>/tracking`):

    tensorboard/<run_name>/       event files         tensorboard --logdir <output_dir>/tracking/tensorboard
    wandb/offline-run-*-<id>/     W&B, offline only   wandb sync <output_dir>/tracking/wandb/offline-run-*
    mlruns/                       MLflow file store   the client or UI at file:<output_dir>/tracking/mlruns
    run_ids.json                  the W&B and MLflow run ids, for a resumed run

A resumed run (`train.resume`, at step k) continues the same run: TensorBoard writes to the same directory from
step k+1 (a purge step: the reader drops what the interrupted run wrote after its checkpoint, so one curve remains);
W&B adds another offline part with the same run id (`resume="allow"`), which `wandb sync` uploads in order into that
run; MLflow reopens the same run id (steps logged after the checkpoint and logged again appear twice there).
Hyper-parameters are logged when a run starts, not again on resume (MLflow refuses a changed parameter).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpokit.core.sections import Tracking, check_report_to
from dpokit.trainer.metrics import JsonlWriter, NullWriter


class Trackers:
    """No tracker: what `open_trackers` gives for an empty `report_to`, and what processes other than the main one
    hold. `Opened` overrides both methods."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Logs the numbers of `metrics` (name -> value) at `step`; other values are skipped."""

    def finish(self) -> None:
        """Flushes and closes every tracker (safe to call twice)."""


class Opened(Trackers):
    """accelerate's tracker objects (`accelerate.tracking.GeneralTracker`), logged to together."""

    def __init__(self, trackers: list[Any]) -> None:
        self.trackers = trackers

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(numbers, step=step)

    def finish(self) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.finish()


def open_trackers(tracking: Tracking, run_dir: str | Path, config: dict[str, Any],
                  resume_step: int = 0) -> Trackers:
    """Starts the trackers `tracking.report_to` names (none: `Trackers()`) and logs `config` to a new run.

    Args:
        tracking: which trackers, project, run name, directory.
        run_dir: the run's output directory (default home of the tracker files; its name is the default run name).
        config: the resolved settings, nested as `config.to_dict` gives them; logged as flat dotted keys.
        resume_step: 0 for a new run; k > 0 when resuming from a checkpoint at step k (the same runs continue).
    """
    if not tracking.report_to:
        return Trackers()
    check_report_to("report_to", tracking.report_to)
    import torch
    from accelerate import PartialState  # accelerate's trackers log through its state (set up once per process)

    PartialState(cpu=not torch.cuda.is_available())  # as `dist.Parallel` builds it; a no-op once built
    root = Path(tracking.tracking_dir or Path(run_dir) / "tracking")
    root.mkdir(parents=True, exist_ok=True)
    ids_file = root / "run_ids.json"
    ids = json.loads(ids_file.read_text()) if resume_step and ids_file.is_file() else {}
    name = tracking.run_name or Path(run_dir).resolve().name
    trackers = []
    for tracker_name in dict.fromkeys(tracking.report_to):
        tracker = OPENERS[tracker_name](root, tracking.project, name, ids.get(tracker_name), resume_step)
        tracker.start()
        if not resume_step:
            tracker.store_init_configuration(hyperparameters(config))
        ids[tracker_name] = _run_id(tracker)
        trackers.append(tracker)
    ids_file.write_text(json.dumps({k: v for k, v in ids.items() if v}, indent=2))
    return Opened(trackers)


def _tensorboard(root: Path, project: str, name: str, run_id: str | None, resume_step: int) -> Any:
    """Event files in tensorboard/<name>. From the purge step on, the reader drops events of earlier writers:
    k+1 on resume (what was logged after the checkpoint), 0 for a new run (an earlier run in the same place)."""
    from accelerate.tracking import TensorBoardTracker

    return TensorBoardTracker(name, str(root / "tensorboard"), purge_step=resume_step + 1 if resume_step else 0)


def _wandb(root: Path, project: str, name: str, run_id: str | None, resume_step: int) -> Any:
    """An offline run under wandb/ (never the network); the same id again when resuming."""
    import wandb
    from accelerate.tracking import WandBTracker

    return WandBTracker(project, name=name, id=run_id, resume="allow", dir=str(root), mode="offline",
                        settings=wandb.Settings(quiet=True))


def _mlflow(root: Path, project: str, name: str, run_id: str | None, resume_step: int) -> Any:
    """MLflow's local file store under mlruns/: experiment `project`, run `name`; the same run id again when
    resuming. The store is set as MLflow's tracking URI (process-wide, as MLflow's fluent API works)."""
    import mlflow
    from accelerate.tracking import MLflowTracker

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this switch
    mlflow.set_tracking_uri((root / "mlruns").resolve().as_uri())
    return MLflowTracker(experiment_name=project, run_id=run_id, run_name=name)


OPENERS: dict[str, Callable[..., Any]] = {"tensorboard": _tensorboard, "wandb": _wandb, "mlflow": _mlflow}


def _run_id(tracker: Any) -> str | None:
    """The id a resumed run reopens: W&B's run id, MLflow's run UUID; none for TensorBoard (its directory)."""
    run = getattr(tracker, "run", None) or getattr(tracker, "active_run", None)
    if run is None:
        return None
    return run.id if hasattr(run, "id") else run.info.run_id


def hyperparameters(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested settings as flat dotted keys whose values every tracker takes: None as "null", lists as JSON.

    >>> hyperparameters({"loss": {"beta": 0.1, "name": "sigmoid"}, "train": {"resume": None, "report_to": ["wandb"]}})
    {'loss.beta': 0.1, 'loss.name': 'sigmoid', 'train.resume': 'null', 'train.report_to': '["wandb"]'}
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(hyperparameters(value, f"{prefix}{key}."))
        elif value is None:
            flat[prefix + key] = "null"
        else:
            flat[prefix + key] = value if isinstance(value, bool | int | float | str) else json.dumps(value)
    return flat


def metric_names(record: dict[str, Any], step_key: str = "step") -> dict[str, Any]:
    """A metrics.jsonl record as tracker metrics: every value but the step and split, named `<split>/<key>`
    (records without a split are training's).

    >>> metric_names({"step": 3, "split": "eval", "loss": 0.5, "rewards/margins": 0.25})
    {'eval/loss': 0.5, 'eval/rewards/margins': 0.25}
    >>> metric_names({"iteration": 2, "reward": 0.75, "kl": float("nan")}, step_key="iteration")
    {'train/reward': 0.75, 'train/kl': nan}
    """
    split = record.get("split", "train")
    return {f"{split}/{k}": v for k, v in record.items() if k not in (step_key, "split")}


class TrackedWriter:
    """metrics.jsonl and the trackers behind one `write`: the record goes to the file as it is, and to every tracker
    at its step (`metric_names`). `lines` counts the file's lines (what a checkpoint records)."""

    def __init__(self, writer: JsonlWriter | NullWriter, trackers: Trackers, step_key: str = "step") -> None:
        self.writer, self.trackers, self.step_key = writer, trackers, step_key

    @property
    def lines(self) -> int:
        return self.writer.lines

    def write(self, record: dict[str, Any]) -> None:
        self.writer.write(record)
        self.trackers.log(metric_names(record, self.step_key), int(record[self.step_key]))

    def close(self) -> None:
        """Closes the file and finishes the trackers; `contextlib.closing` calls it also when the run fails."""
        self.writer.close()
        self.trackers.finish()


def metrics_writer(run_dir: str | Path, tracking: Tracking, config: dict[str, Any], resume_step: int = 0,
                   main: bool = True, step_key: str = "step") -> TrackedWriter:
    """metrics.jsonl in `run_dir` plus the trackers `tracking` names, on the main process; on the others a writer of
    nothing (`NullWriter`, `Trackers()`). `resume_step` as in `open_trackers`."""
    if not main:
        return TrackedWriter(NullWriter(), Trackers(), step_key)
    trackers = open_trackers(tracking, run_dir, config, resume_step)
    return TrackedWriter(JsonlWriter(Path(run_dir) / "metrics.jsonl"), trackers, step_key)
