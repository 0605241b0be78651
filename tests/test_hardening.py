"""Bad inputs end in one clear line: checkpoints, files, command-line values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_model

from pacsim.data.stats import Normalizer
from pacsim.io import CheckpointError, load_checkpoint, save_checkpoint


def _normalizer(**change: np.ndarray) -> Normalizer:
    stats = {"input_mean": np.zeros(4), "input_std": np.ones(4),
             "target_mean": np.zeros(2), "target_std": np.ones(2)}
    return Normalizer(**{**stats, **change})


@pytest.mark.parametrize("change, match", [
    ({"input_std": np.array([1.0, 0.0, 1.0, 1.0])}, "input_std must be finite and positive"),
    ({"target_mean": np.array([np.nan, 0.0])}, "target_mean holds NaN"),
    ({"target_std": np.array([1.0, np.inf])}, "target_std must be finite and positive"),
    ({"input_mean": np.zeros(3), "input_std": np.ones(3)}, "input statistics have 3 features"),
    ({"input_std": np.ones(5)}, "input_mean has shape"),
])
def test_checkpoint_with_a_bad_normalizer_is_refused(tmp_path, change, match):
    path = save_checkpoint(tmp_path / "m.pt", make_model("mlp"), normalizer=_normalizer(**change))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_checkpoint_normalizer_must_fit_the_recorded_data(tmp_path):
    meta = {"data": {"input_shape": [4], "target_shape": [2, 8]}}
    path = save_checkpoint(tmp_path / "m.pt", make_model("mlp"), meta=meta,
                           normalizer=_normalizer())
    with pytest.raises(CheckpointError, match=r"target statistics have shape \[2\].*\[2, 1\]"):
        load_checkpoint(path)
    good = save_checkpoint(tmp_path / "ok.pt", make_model("mlp"), normalizer=_normalizer())
    assert "normalizer" in load_checkpoint(good)[2]


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    model = make_model("mlp")
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    path = save_checkpoint(tmp_path / "m.pt", model)
    with pytest.raises(CheckpointError, match="weights hold NaN or inf"):
        load_checkpoint(path)
