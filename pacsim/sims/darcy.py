"""Steady Darcy flow -div(a grad u) = f on the unit square, u = 0 on the boundary.

The coefficient ``a`` is two-valued (``a_low``, ``a_high``): a Gaussian random field with
squared-exponential correlation length ``length_scale`` thresholded at zero. Inputs
(N, 1, nx, nx) = a, targets (N, 1, nx, nx) = u on the node grid ``coords/x`` x
``coords/y`` (boundary nodes included). Discretisation: the 5-point finite-volume
scheme with harmonic means of ``a`` on cell faces (second order for smooth ``a``, an
M-matrix, so the discrete maximum principle holds), solved by sparse LU (SuperLU).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from .base import Param, SimulationError, Simulator, blocks_of, register

BLOCK = 256


def grid(nx: int) -> np.ndarray:
    """Node coordinates along one axis: ``nx`` points from 0 to 1."""
    return np.linspace(0.0, 1.0, nx)


def solve(a: np.ndarray, forcing: float) -> np.ndarray:
    """Solution on the node grid for nodal coefficients ``a`` of shape (nx, nx)."""
    nx = a.shape[0]
    h = 1.0 / (nx - 1)
    m = nx - 2
    inner = a[1:-1, 1:-1]
    # harmonic means on the four faces of every interior node
    east = 2 * inner * a[2:, 1:-1] / (inner + a[2:, 1:-1])
    west = 2 * inner * a[:-2, 1:-1] / (inner + a[:-2, 1:-1])
    north = 2 * inner * a[1:-1, 2:] / (inner + a[1:-1, 2:])
    south = 2 * inner * a[1:-1, :-2] / (inner + a[1:-1, :-2])
    idx = np.arange(m * m).reshape(m, m)
    rows = [idx.ravel()]
    cols = [idx.ravel()]
    vals = [(east + west + north + south).ravel()]
    for coef, shift in ((east, (1, 0)), (west, (-1, 0)), (north, (0, 1)), (south, (0, -1))):
        i, j = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
        ii, jj = i + shift[0], j + shift[1]
        ok = (ii >= 0) & (ii < m) & (jj >= 0) & (jj < m)
        rows.append(idx[i[ok], j[ok]])
        cols.append(idx[ii[ok], jj[ok]])
        vals.append(-coef[ok])
    mat = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                        shape=(m * m, m * m))
    u = np.zeros_like(a, dtype=np.float64)
    u[1:-1, 1:-1] = splu(mat).solve(np.full(m * m, forcing * h * h)).reshape(m, m)
    return u


def poisson_series(x: np.ndarray, y: np.ndarray, forcing: float, terms: int = 401
                   ) -> np.ndarray:
    """Series solution of -lap(u) = forcing on the unit square, u = 0 on the boundary."""
    k = np.arange(1, terms + 1, 2)
    sx = np.sin(np.pi * np.outer(k, x))  # (K, nx)
    sy = np.sin(np.pi * np.outer(k, y))
    coef = 16 * forcing / (np.pi**4 * np.outer(k, k) * (k[:, None] ** 2 + k[None, :] ** 2))
    return np.einsum("mn,mi,nj->ij", coef, sx, sy)


def random_coefficient(rng: np.random.Generator, b: int, nx: int, length_scale: float,
                       a_low: float, a_high: float) -> np.ndarray:
    """``b`` two-valued fields: a thresholded Gaussian random field on the node grid.

    The field is drawn on a periodic grid of twice the size and cropped, so opposite
    edges of the square are not correlated.
    """
    size = 2 * nx
    h = 1.0 / (nx - 1)
    k = 2 * np.pi * np.fft.fftfreq(size, d=h)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    amp = np.exp(-k2 * length_scale**2 / 4)  # sqrt of the squared-exponential spectrum
    noise = rng.standard_normal((b, size, size))
    g = np.fft.ifft2(np.fft.fft2(noise) * amp).real[:, :nx, :nx]
    return np.where(g > 0, a_high, a_low)


def _finalize(p: dict[str, Any], setting: str) -> dict[str, Any]:
    if p["a_low"] > p["a_high"]:
        raise SimulationError(f"darcy2d: a_low ({p['a_low']}) must not exceed a_high "
                              f"({p['a_high']})")
    return p


def _generate(n: int, p: dict[str, Any], rng: np.random.Generator) -> Iterator[tuple[Any, ...]]:
    nx = p["nx"]
    for lo, hi in blocks_of(n, BLOCK):
        a = random_coefficient(rng, hi - lo, nx, p["length_scale"], p["a_low"], p["a_high"])
        u = np.stack([solve(ai, p["forcing"]) for ai in a])
        yield a[:, None], u[:, None]


SIMULATOR = register(Simulator(
    name="darcy2d",
    summary="steady Darcy flow on the unit square, coefficient field -> pressure field",
    params=(
        Param("a_low", "-", "coefficient value where the random field is negative", 3.0,
              1e-3, 1e3),
        Param("a_high", "-", "coefficient value where the random field is positive", 12.0,
              1e-3, 1e3),
        Param("length_scale", "-", "correlation length of the Gaussian random field", 0.1,
              0.01, 1.0),
        Param("forcing", "-", "constant source term f", 1.0, -1e3, 1e3),
        Param("nx", "-", "grid points per side (boundary included)", 32, 5, 513, kind="int"),
    ),
    settings={"source": {}, "target": {"a_low": 1.0, "length_scale": 0.05}},
    generate=_generate,
    shapes=lambda p: ((1, p["nx"], p["nx"]), (1, p["nx"], p["nx"])),
    coords=lambda p: {"x": grid(p["nx"]), "y": grid(p["nx"])},
    finalize=_finalize,
    describe="coefficient contrast 4 -> 12 and inclusions half as large: the pressure "
             "field gets finer, sharper structure than any source sample",
))
