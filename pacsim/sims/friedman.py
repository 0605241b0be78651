"""The Friedman #1 transfer family (Pardoe & Stone, 2010).

``y = a1*10*sin(pi*(b1*x1+c1)*(b2*x2+c2)) + a2*20*(b3*x3+c3-0.5)^2
      + a3*10*(b4*x4+c4) + a4*5*(b5*x5+c5) + noise``, with ``x`` uniform on [0, 1]^10
(x6..x10 are irrelevant). The source is the standard Friedman #1 (a = b = 1, c = 0); a
target draws ``a, b ~ N(1, 0.1 q)`` and ``c ~ N(0, 0.05 q)`` from a fixed task seed, so
``q`` sets how far the target task lies from the source.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .base import Param, Simulator, blocks_of, register

N_FEATURES = 10
SETTINGS = ("source", "target")


def task_params(setting: str = "source", q: float = 1.0, task_seed: int = 0
                ) -> dict[str, list[float]]:
    """Coefficients ``a`` (4), ``b`` (5), ``c`` (5) of a setting."""
    if setting == "source":
        return {"a": [1.0] * 4, "b": [1.0] * 5, "c": [0.0] * 5}
    if setting != "target":
        raise ValueError(f"unknown friedman setting {setting!r}; choose one of {SETTINGS}")
    if q < 0:
        raise ValueError(f"friedman relatedness q must be >= 0, got {q}")
    rng = np.random.default_rng(task_seed)
    return {
        "a": rng.normal(1.0, 0.1 * q, 4).tolist(),
        "b": rng.normal(1.0, 0.1 * q, 5).tolist(),
        "c": rng.normal(0.0, 0.05 * q, 5).tolist(),
    }


def friedman(x: np.ndarray, a: list[float], b: list[float], c: list[float]) -> np.ndarray:
    """Noise-free response for inputs ``x`` of shape (N, >=5); returns shape (N,)."""
    a_, b_, c_ = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    u = x[:, :5] * b_ + c_
    return (a_[0] * 10 * np.sin(np.pi * u[:, 0] * u[:, 1]) + a_[1] * 20 * (u[:, 2] - 0.5) ** 2
            + a_[2] * 10 * u[:, 3] + a_[3] * 5 * u[:, 4])


def sample(n: int, params: dict[str, list[float]], rng: np.random.Generator,
           noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples: inputs (n, 10) float32 and targets (n, 1) float32."""
    x = rng.uniform(0.0, 1.0, size=(n, N_FEATURES))
    y = friedman(x, **params) + noise * rng.standard_normal(n)
    return x.astype(np.float32), y[:, None].astype(np.float32)


def _finalize(p: dict[str, Any], setting: str) -> dict[str, Any]:
    drawn = task_params("target" if setting == "target" else "source", p["q"], p["task_seed"])
    return {**p, **{k: drawn[k] for k in ("a", "b", "c") if p[k] is None}}


def _generate(n: int, p: dict[str, Any], rng: np.random.Generator) -> Iterator[tuple[Any, ...]]:
    coeffs = {k: p[k] for k in ("a", "b", "c")}
    for lo, hi in blocks_of(n, 100_000):
        yield sample(hi - lo, coeffs, rng, p["noise"])


SIMULATOR = register(Simulator(
    name="friedman",
    summary="Friedman #1 regression with transfer coefficients (10 inputs -> 1 output)",
    params=(
        Param("a", "-", "output weights of the four terms (derived from q for the target)",
              [1.0] * 4, -10, 10, kind="floats", length=4),
        Param("b", "-", "input scales (derived from q for the target)", [1.0] * 5, -10, 10,
              kind="floats", length=5),
        Param("c", "-", "input shifts (derived from q for the target)", [0.0] * 5, -10, 10,
              kind="floats", length=5),
        Param("q", "-", "relatedness: spread of the target coefficients", 0.0, 0, 10),
        Param("task_seed", "-", "seed that draws the target coefficients", 0, 0, 2**31 - 1,
              kind="int"),
        Param("noise", "-", "standard deviation of the added Gaussian noise", 1.0, 0, 100),
    ),
    settings={"source": {}, "target": {"a": None, "b": None, "c": None, "q": 1.0}},
    generate=_generate,
    shapes=lambda p: ((N_FEATURES,), (1,)),
    input_names=lambda p: [f"x{i + 1}" for i in range(N_FEATURES)],
    finalize=_finalize,
    describe="the coefficients a, b, c move by q (N(1, 0.1q), N(0, 0.05q)); the shape of "
             "every term changes a little, so the source is a good but biased start",
))
