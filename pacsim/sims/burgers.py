"""Viscous Burgers equation u_t + u*u_x = nu*u_xx on the periodic domain [0, 1).

Convention: ``nu`` multiplies u_xx directly (PDEBench's files name ``Nu`` the value
``nu*pi`` of this convention, since their solver divides by pi). Inputs (N, 1, nx): a
smooth random zero-mean initial state (``n_modes`` Fourier modes with amplitudes ~ 1/k,
scaled to a peak of ``amplitude``); targets (N, 1, nx): the state at ``t_final``.

Solver: Fourier pseudo-spectral in space (2/3 de-aliasing) and ETDRK4 in time (Cox &
Matthews 2002, with Kassam & Trefethen's contour-integral coefficients), which treats
diffusion exactly. It runs on a grid of at least 512 points, a multiple of ``nx``, and
returns every (solve/nx)-th point; a whole block of samples is advanced at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.fft as sfft

from .base import Param, Simulator, blocks_of, register

MIN_SOLVE_POINTS = 512
CFL = 0.4
BLOCK = 512


def grid(nx: int) -> np.ndarray:
    """``nx`` points of the periodic domain [0, 1)."""
    return np.arange(nx) / nx


def _etdrk4_coefficients(lin: np.ndarray, dt: float, m: int = 32) -> tuple[np.ndarray, ...]:
    r = np.exp(1j * np.pi * (np.arange(1, m + 1) - 0.5) / m)
    lr = dt * lin[:, None] + r[None, :]
    e_lr = np.exp(lr)
    q = dt * np.real(np.mean((np.exp(lr / 2) - 1) / lr, axis=1))
    f1 = dt * np.real(np.mean((-4 - lr + e_lr * (4 - 3 * lr + lr**2)) / lr**3, axis=1))
    f2 = dt * np.real(np.mean((2 + lr + e_lr * (-2 + lr)) / lr**3, axis=1))
    f3 = dt * np.real(np.mean((-4 - 3 * lr - lr**2 + e_lr * (4 - lr)) / lr**3, axis=1))
    return np.exp(dt * lin), np.exp(dt * lin / 2), q, f1, f2, f3


def solve(u0: np.ndarray, nu: float, t_final: float, cfl: float = CFL) -> np.ndarray:
    """Advance initial states ``u0`` (B, M) on the uniform periodic grid to ``t_final``."""
    m = u0.shape[-1]
    k = 2 * np.pi * np.fft.rfftfreq(m, d=1.0 / m)
    dealias = np.arange(k.size) < (2 * (m // 2)) // 3
    umax = max(float(np.abs(u0).max()), 1e-12)
    steps = max(1, int(np.ceil(t_final / (cfl * (1.0 / m) / umax))))
    dt = t_final / steps
    e, e2, q, f1, f2, f3 = _etdrk4_coefficients(-nu * k**2, dt)
    g = -0.5j * k * dealias

    def nonlin(v: np.ndarray) -> np.ndarray:
        u = sfft.irfft(v, n=m, axis=-1, workers=-1)
        return g * sfft.rfft(u * u, axis=-1, workers=-1)

    v = sfft.rfft(u0, axis=-1, workers=-1)
    for _ in range(steps):
        nv = nonlin(v)
        a = e2 * v + q * nv
        na = nonlin(a)
        b = e2 * v + q * na
        nb = nonlin(b)
        c = e2 * a + q * (2 * nb - nv)
        nc = nonlin(c)
        v = e * v + nv * f1 + 2 * (na + nb) * f2 + nc * f3
    return sfft.irfft(v, n=m, axis=-1, workers=-1)


def cole_hopf_sine(x: np.ndarray, t: float, nu: float, amplitude: float = 1.0,
                   terms: int = 200) -> np.ndarray:
    """Exact solution for ``u0 = amplitude * sin(2 pi x)`` via the Cole-Hopf transform."""
    from scipy.special import ive

    z = amplitude / (4 * np.pi * nu)
    n = np.arange(1, terms + 1)[:, None]
    decay = np.exp(-nu * (2 * np.pi * n) ** 2 * t) * ive(n, z)
    num = (n * decay * np.sin(2 * np.pi * n * x[None, :])).sum(0)
    den = ive(0, z) + 2 * (decay * np.cos(2 * np.pi * n * x[None, :])).sum(0)
    return 8 * np.pi * nu * num / den


def random_initial(rng: np.random.Generator, b: int, m: int, n_modes: int,
                   amplitude: float) -> np.ndarray:
    """``b`` smooth zero-mean periodic states on ``m`` points with peak ``amplitude``."""
    x = grid(m)
    k = np.arange(1, n_modes + 1)[:, None]
    coef = rng.standard_normal((b, 2, n_modes)) / k[:, 0]
    u = (coef[:, 0, :, None] * np.cos(2 * np.pi * k * x)
         + coef[:, 1, :, None] * np.sin(2 * np.pi * k * x)).sum(1)
    return amplitude * u / np.abs(u).max(axis=1, keepdims=True)


def solve_points(nx: int) -> int:
    """Grid size the solver uses for output size ``nx``."""
    return nx * max(1, -(-MIN_SOLVE_POINTS // nx))


def _generate(n: int, p: dict[str, Any], rng: np.random.Generator) -> Iterator[tuple[Any, ...]]:
    nx = p["nx"]
    m = solve_points(nx)
    for lo, hi in blocks_of(n, BLOCK):
        u0 = random_initial(rng, hi - lo, m, p["n_modes"], p["amplitude"])
        ut = solve(u0, p["nu"], p["t_final"])
        step = m // nx
        yield u0[:, None, ::step], ut[:, None, ::step]


SIMULATOR = register(Simulator(
    name="burgers1d",
    summary="viscous Burgers on the periodic unit interval, initial state -> state at t_final",
    params=(
        Param("nu", "-", "viscosity (coefficient of u_xx; PDEBench's Nu = pi * nu)", 0.05,
              1e-3, 10),
        Param("t_final", "-", "time of the target state", 0.5, 1e-4, 10),
        Param("nx", "-", "output grid points", 128, 16, 4096, kind="int"),
        Param("n_modes", "-", "Fourier modes of the random initial state", 5, 1, 32,
              kind="int"),
        Param("amplitude", "-", "peak |u| of the initial state", 1.0, 1e-3, 5),
    ),
    settings={"source": {}, "target": {"nu": 0.01}},
    generate=_generate,
    shapes=lambda p: ((1, p["nx"]), (1, p["nx"])),
    coords=lambda p: {"x": grid(p["nx"])},
    describe="viscosity 0.05 -> 0.01: fronts steepen into near-shocks five times "
             "sharper than the source ever shows",
))
