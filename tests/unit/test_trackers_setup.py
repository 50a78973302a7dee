"""Tracker settings are checked with the other keys; only the main process writes; the docstring examples hold."""

from __future__ import annotations

import doctest
import importlib.util
import json

import pytest

from dpokit.core.errors import ConfigError
from dpokit.core.sections import Tracking
from dpokit.core.settings import validate
from dpokit.rlhf.ppo_config import PPOConfig
from dpokit.trainer import trackers
from dpokit.trainer.config import Config
from dpokit.trainer.dist import Single
from dpokit.trainer.trackers import metrics_writer


def test_docstring_examples():
    result = doctest.testmod(trackers, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_an_unknown_tracker_is_refused_naming_the_key_and_the_choices():
    cfg = Config()
    cfg.train.report_to = ["tensorboard", "comet"]
    with pytest.raises(ConfigError, match=r"'train.report_to': unknown tracker 'comet'; choose from tensorboard, "
                                          r"wandb, mlflow"):
        validate(cfg)
    ppo = PPOConfig(report_to=["aim"])
    with pytest.raises(ConfigError, match=r"'report_to': unknown tracker 'aim'"):
        validate(ppo)


def test_the_tracking_keys_are_the_same_for_train_and_ppo():
    cfg, ppo = Config(), PPOConfig()
    assert Tracking.of(cfg.train) == Tracking.of(ppo) == Tracking([], "dpokit", "", "")


class OtherRank(Single):
    """What `dist.Parallel` is on process 1 of a group: not the main process."""

    rank = 1


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="pip install 'dpokit[tensorboard]'")
def test_only_the_main_process_writes_metrics_and_opens_trackers(tmp_path):
    tracking = Tracking(["tensorboard"])
    for group, run_dir in ((OtherRank(), tmp_path / "rank1"), (Single(), tmp_path / "rank0")):
        run_dir.mkdir()
        writer = metrics_writer(run_dir, tracking, {"loss": {"beta": 0.1}}, main=group.is_main)
        writer.write({"step": 1, "split": "train", "loss": 0.69})
        writer.close()
    assert list((tmp_path / "rank1").iterdir()) == []
    assert json.loads((tmp_path / "rank0" / "metrics.jsonl").read_text()) == {"step": 1, "split": "train",
                                                                               "loss": 0.69}
    assert list((tmp_path / "rank0" / "tracking" / "tensorboard" / "rank0").glob("events.out.tfevents.*"))
