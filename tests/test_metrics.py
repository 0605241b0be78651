"""Metrics agree with reference formulas and accumulate exactly over uneven batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from pacsim import metrics


def _pair(shape=(37, 3, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(*shape, generator=g) + 2
    return y + 0.3 * torch.randn(*shape, generator=g), y


def test_against_reference_formulas():
    p, y = _pair()
    e = (p - y).double().numpy()
    assert metrics.rmse(p, y) == pytest.approx(np.sqrt(np.mean(e**2)), rel=1e-12)
    assert metrics.mae(p, y) == pytest.approx(np.mean(np.abs(e)), rel=1e-12)
    assert metrics.max_error(p, y) == pytest.approx(np.abs(e).max(), rel=1e-12)
    rel = np.linalg.norm(e.reshape(37, -1), axis=1) / np.linalg.norm(
        y.double().numpy().reshape(37, -1), axis=1)
    assert metrics.nrmse(p, y) == pytest.approx(rel.mean(), rel=1e-12)
    assert metrics.r2(p, y) == pytest.approx(
        r2_score(y.reshape(37, -1).numpy(), p.reshape(37, -1).numpy()), rel=1e-5)


def test_accumulator_over_unequal_batches_matches_one_shot():
    p, y = _pair()
    acc = metrics.Accumulator()
    for lo, hi in [(0, 1), (1, 11), (11, 30), (30, 37)]:
        acc.update(p[lo:hi], y[lo:hi])
    whole = metrics.Accumulator().update(p, y).compute()
    assert acc.count == 37
    for name, value in acc.compute().items():
        assert value == pytest.approx(whole[name], rel=1e-12, abs=1e-12), name


def test_perfect_and_constant_predictions():
    _, y = _pair((10, 2))
    assert metrics.rmse(y, y) == 0.0 and metrics.r2(y, y) == 1.0
    const = torch.ones(10, 1)
    assert metrics.r2(const, const) == 1.0
    assert metrics.r2(const + 1, const) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="shape"):
        metrics.rmse(torch.zeros(3, 2), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="at least one sample"):
        metrics.rmse(torch.zeros(0, 2), torch.zeros(0, 2))
    acc = metrics.Accumulator().update(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="outputs per sample"):
        acc.update(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no batches"):
        metrics.Accumulator().compute()


def test_r2_is_stable_for_targets_far_from_zero():
    """Targets of mean 1e6 and unit spread: a sum-of-squares variance cancels to noise
    there; the merged moments must agree with scikit-learn over uneven batches."""

    g = torch.Generator().manual_seed(0)
    t = 1e6 + torch.randn(1000, 3, generator=g, dtype=torch.float64)
    p = t + 0.1 * torch.randn(1000, 3, generator=g, dtype=torch.float64)
    acc = metrics.Accumulator()
    for i in range(0, 1000, 77):
        acc.update(p[i:i + 77], t[i:i + 77])
    assert acc.compute()["r2"] == pytest.approx(r2_score(t.numpy(), p.numpy()), rel=1e-9)
