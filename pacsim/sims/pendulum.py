"""Damped nonlinear pendulum: theta'' + gamma*theta' + omega^2*sin(theta) = 0.

Inputs (N, 2): initial angle (rad) and angular velocity (rad/s), uniform in
[-theta_max, theta_max] x [-v_max, v_max]. Targets (N, 2, nt): angle and angular
velocity at ``coords/t`` (nt equally spaced times in (0, t_final]). Integrated with
scipy's DOP853 (8th-order Runge-Kutta) at rtol = atol = 1e-10, a block of samples as one
vectorised system.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy.integrate import solve_ivp

from .base import Param, SimulationError, Simulator, blocks_of, register

RTOL = ATOL = 1e-10
BLOCK = 256


def times(p: dict[str, Any]) -> np.ndarray:
    """The output times: ``nt`` points in (0, t_final]."""
    return np.linspace(0.0, p["t_final"], p["nt"] + 1)[1:]


def integrate(theta0: np.ndarray, v0: np.ndarray, gamma: float, omega: float,
              t: np.ndarray) -> np.ndarray:
    """Trajectories (B, 2, len(t)) for initial states ``theta0``, ``v0`` of shape (B,)."""
    b = theta0.size

    def rhs(_: float, y: np.ndarray) -> np.ndarray:
        th, v = y[:b], y[b:]
        return np.concatenate([v, -gamma * v - omega**2 * np.sin(th)])

    sol = solve_ivp(rhs, (0.0, float(t[-1])), np.concatenate([theta0, v0]), method="DOP853",
                    t_eval=t, rtol=RTOL, atol=ATOL)
    if not sol.success:
        raise SimulationError(f"pendulum: integration failed ({sol.message})")
    return np.stack([sol.y[:b], sol.y[b:]], axis=1)


def _generate(n: int, p: dict[str, Any], rng: np.random.Generator) -> Iterator[tuple[Any, ...]]:
    t = times(p)
    for lo, hi in blocks_of(n, BLOCK):
        th = rng.uniform(-p["theta_max"], p["theta_max"], hi - lo)
        v = rng.uniform(-p["v_max"], p["v_max"], hi - lo)
        yield np.stack([th, v], 1), integrate(th, v, p["gamma"], p["omega"], t)


SIMULATOR = register(Simulator(
    name="pendulum",
    summary="damped nonlinear pendulum, initial state -> trajectory (2 -> 2 x nt)",
    params=(
        Param("gamma", "1/s", "damping coefficient", 0.1, 0, 10),
        Param("omega", "rad/s", "small-angle natural frequency", 1.0, 1e-3, 20),
        Param("t_final", "s", "end of the trajectory", 10.0, 1e-3, 1000),
        Param("nt", "-", "output time points", 64, 2, 10_000, kind="int"),
        Param("theta_max", "rad", "initial angles are drawn in [-theta_max, theta_max]", 2.0,
              0, 3.1),
        Param("v_max", "rad/s", "initial velocities are drawn in [-v_max, v_max]", 1.0, 0, 20),
    ),
    settings={"source": {}, "target": {"gamma": 0.4, "omega": 1.5}},
    generate=_generate,
    shapes=lambda p: ((2,), (2, p["nt"])),
    coords=lambda p: {"t": times(p)},
    input_names=lambda p: ["theta0", "dtheta0"],
    describe="damping 0.1 -> 0.4 /s and frequency 1.0 -> 1.5 rad/s: phases drift apart "
             "over the trajectory and large swings decay faster",
))
