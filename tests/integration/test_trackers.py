"""Experiment trackers on a real tiny `dpokit train`: TensorBoard's event reader, W&B's own reader of its offline
run file (`wandb leet inspect --json`) and MLflow's client on its local store each give back every scalar of
metrics.jsonl, train and eval, at its step, and the config as hyper-parameters; a resumed run continues the same
curves; a tracker whose package is missing is a one-line error before anything loads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.core.errors import ConfigError
from dpokit.core.sections import PACKAGES, TRACKERS, check_report_to

pytestmark = pytest.mark.usefixtures("one_thread")


def installed(name: str) -> bool:
    try:
        check_report_to("report_to", [name])
    except ConfigError:
        return False
    return True


AVAILABLE = [name for name in TRACKERS if installed(name)]


def needs(name: str) -> None:
    if name not in AVAILABLE:
        pytest.skip(f"{name} is not installed (pip install 'dpokit[{name}]')")


def train_args(model_dir, hh_path, out, *extra) -> list[str]:
    """4 steps, eval and a checkpoint every 2: train and eval lines at steps 1-4 and 2, 4."""
    return ["train", "--model", str(model_dir), "--data", str(hh_path), "--output-dir", str(out), "--max-steps", "4",
            "--lr", "1e-3", "--batch-size", "2", "--max-length", "96", "data.limit=12", "data.on_bad_record=skip",
            "data.eval_fraction=0.25", "train.eval_every=2", "train.save_every=2", "train.optimizer=adamw",
            "train.progress=false", "train.save=false", "train.project=trackers-test", "loss.beta=0.25", *extra]


def jsonl_scalars(out: Path, step_key: str = "step") -> dict[tuple[str, int], float]:
    """Every number of metrics.jsonl as (`<split>/<key>`, step) -> value, the names trackers get."""
    scalars = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key not in (step_key, "split"):
                scalars[(f"{record.get('split', 'train')}/{key}", record[step_key])] = value
    return scalars


@pytest.fixture(scope="module")
def tracked(model_dir, hh_path, tmp_path_factory) -> Path:
    """One run logging to every installed tracker at once."""
    if not AVAILABLE:
        pytest.skip("no tracker installed (pip install 'dpokit[tensorboard,wandb,mlflow]')")
    out = tmp_path_factory.mktemp("tracked") / "run"
    assert main(train_args(model_dir, hh_path, out, f"train.report_to=[{','.join(AVAILABLE)}]")) == 0
    return out


def tensorboard_scalars(out: Path, run_name: str = "run") -> tuple[list[tuple[str, int]], dict]:
    """TensorBoard's event reader over the run's directory: (tag, step) in the order read, and tag, step -> value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tracking" / "tensorboard" / run_name))
    events.Reload()
    read = [(tag, e.step, e.value) for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
    return [(tag, step) for tag, step, _ in read], {(tag, step): value for tag, step, value in read}


def test_tensorboard_curves_are_metrics_jsonl(tracked):
    needs("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    order, scalars = tensorboard_scalars(tracked)
    expected = jsonl_scalars(tracked)
    assert len(order) == len(set(order)) == len(expected)  # each scalar once
    assert scalars == pytest.approx(expected, rel=1e-6)  # event files hold float32
    assert {("eval/loss", 2), ("eval/loss", 4), ("train/loss", 1), ("train/loss", 4)} <= set(scalars)
    (hparams_dir,) = [p for p in (tracked / "tracking" / "tensorboard" / "run").iterdir() if p.is_dir()
                      and any(p.glob("events.out.tfevents.*"))]
    events = EventAccumulator(str(hparams_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["loss.beta"].number_value == 0.25 and hparams["train.max_steps"].number_value == 4
    assert hparams["train.report_to"].string_value == json.dumps(AVAILABLE)


def wandb_records(run_dir: Path) -> list[dict]:
    """W&B's own reader of an offline run's transaction log: one JSON record per line."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def wandb_history(records: list[dict]) -> dict[tuple[str, int], float]:
    return {(key, r["history"]["step"]["num"]): value for r in records if r["type"] == "history"
            for key, value in r["history"]["item"].items() if not key.startswith("_")}


def test_wandb_offline_run_holds_metrics_jsonl(tracked):
    needs("wandb")
    (run_dir,) = (tracked / "tracking" / "wandb").glob("offline-run-*")
    run_id = json.loads((tracked / "tracking" / "run_ids.json").read_text())["wandb"]
    assert run_dir.name.endswith(f"-{run_id}") and (run_dir / f"run-{run_id}.wandb").is_file()
    records = wandb_records(run_dir)
    assert wandb_history(records) == pytest.approx(jsonl_scalars(tracked), rel=1e-12)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert (run["project"], run["display_name"], run["run_id"]) == ("trackers-test", "run", run_id)
    config = {k: v for r in records if r["type"] == "config" for k, v in r["config"]["update"].items()}
    assert config["loss.beta"] == 0.25 and config["train.max_steps"] == 4 and config["train.resume"] == "null"


def mlflow_run(out: Path):
    """MLflow's client on the run's local file store: the experiment's one run, and the client."""
    from mlflow import MlflowClient

    client = MlflowClient((out / "tracking" / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "trackers-test"]
    (run,) = client.search_runs([experiment.experiment_id])
    return client, run


def mlflow_scalars(client, run) -> dict[tuple[str, int], float]:
    """Every metric's history, in the order stored: a step logged again keeps its latest value here."""
    return {(key, m.step): m.value for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)}


def test_mlflow_store_holds_metrics_jsonl(tracked, monkeypatch):
    needs("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client, run = mlflow_run(tracked)
    assert run.info.run_id == json.loads((tracked / "tracking" / "run_ids.json").read_text())["mlflow"]
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert mlflow_scalars(client, run) == pytest.approx(jsonl_scalars(tracked), rel=1e-12)
    histories = [client.get_metric_history(run.info.run_id, key) for key in run.data.metrics]
    assert sum(len(h) for h in histories) == len(jsonl_scalars(tracked))  # each once
    assert run.data.params["loss.beta"] == "0.25" and run.data.params["data.limit"] == "12"


def test_a_resumed_run_continues_the_same_curves(tracked, model_dir, hh_path, tmp_path, monkeypatch):
    """The run again from its step-2 checkpoint (as after a crash at step 4): steps 3-4 are logged a second time.
    TensorBoard then reads one curve of the new values; W&B and MLflow continue the same run ids."""
    out = tmp_path / "run"
    shutil.copytree(tracked, out, symlinks=True)
    ids = json.loads((out / "tracking" / "run_ids.json").read_text())
    resume = f"train.resume={out / 'checkpoints' / 'step-00000002'}"
    assert main(train_args(model_dir, hh_path, out, resume, f"train.report_to=[{','.join(AVAILABLE)}]")) == 0
    expected = jsonl_scalars(out)
    assert {step for (_, step) in expected} == {1, 2, 3, 4}
    assert json.loads((out / "tracking" / "run_ids.json").read_text()) == ids
    if "tensorboard" in AVAILABLE:
        order, scalars = tensorboard_scalars(out)
        assert len(order) == len(set(order)) == len(expected)  # no step twice: the old steps 3-4 were purged
        assert scalars == pytest.approx(expected, rel=1e-6)  # and the timings are the new run's
    if "wandb" in AVAILABLE:
        first, second = sorted((out / "tracking" / "wandb").glob("offline-run-*"))
        assert first.name.endswith(ids["wandb"]) and second.name.endswith(ids["wandb"])
        records = wandb_records(second)
        assert [r["run"]["resume"] for r in records if r["type"] == "run"] == [True]
        history = wandb_history(records)
        assert {step for (_, step) in history} == {3, 4}
        assert history == pytest.approx({k: v for k, v in expected.items() if k[1] > 2}, rel=1e-12)
    if "mlflow" in AVAILABLE:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        client, run = mlflow_run(out)  # still one run
        assert run.info.run_id == ids["mlflow"]
        assert mlflow_scalars(client, run) == pytest.approx(expected, rel=1e-12)


def test_a_failed_run_still_finishes_its_trackers(model_dir, hh_path, tmp_path):
    """A non-finite loss at step 2 stops the run; its step 1 is in every tracker and no run is left open, so the next
    run in the same process starts its own (MLflow would refuse a second active run, W&B would reuse the first)."""
    if not AVAILABLE:
        pytest.skip("no tracker installed")
    out = tmp_path / "run"
    tracked = f"train.report_to=[{','.join(AVAILABLE)}]"
    assert main(train_args(model_dir, hh_path, out, "--lr", "1e20", tracked)) == 2
    assert [key[1] for key in jsonl_scalars(out) if key[0] == "train/loss"] == [1]
    if "tensorboard" in AVAILABLE:
        assert tensorboard_scalars(out)[1] == pytest.approx(jsonl_scalars(out), rel=1e-6)
    if "wandb" in AVAILABLE:
        import wandb

        assert wandb.run is None
    if "mlflow" in AVAILABLE:
        import mlflow

        assert mlflow.active_run() is None


@pytest.mark.parametrize("name", TRACKERS)
def test_a_missing_tracker_package_is_a_one_line_error(name, model_dir, hh_path, tmp_path, monkeypatch, capsys):
    for module in PACKAGES[name]:
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: `import wandb` fails
    assert main(train_args(model_dir, hh_path, tmp_path / "run", f"train.report_to=[{name}]")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"train.report_to': {name} is not installed: pip install 'dpokit[{name}]'"), err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()  # refused before anything ran
