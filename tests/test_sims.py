"""Simulators against physics: analytic solutions, conservation laws, references."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from pacsim import sims
from pacsim.data import H5Dataset
from pacsim.sims import burgers, darcy, diode, friedman, pendulum


def _read(path):
    with h5py.File(path) as f:
        return (f["inputs"][()], f["targets"][()], json.loads(f.attrs["params"]),
                {k: v[()] for k, v in f["coords"].items()} if "coords" in f else {})


def test_friedman_source_matches_scikit_learn(tmp_path):
    from sklearn.datasets import make_friedman1

    x, y, params, _ = _read(sims.simulate("friedman", setting="source", n=300, seed=1,
                                          out=tmp_path / "f.h5", noise=0.0))
    ref_x, ref_y = make_friedman1(n_samples=50, noise=0.0, random_state=3)
    assert np.allclose(friedman.friedman(ref_x, params["a"], params["b"], params["c"]), ref_y)
    formula = (10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2
               + 10 * x[:, 3] + 5 * x[:, 4])
    assert np.allclose(y[:, 0], formula, atol=1e-4)
    assert params == {"a": [1.0] * 4, "b": [1.0] * 5, "c": [0.0] * 5, "q": 0.0,
                      "task_seed": 0, "noise": 0.0}


def test_target_task_is_fixed_by_setting_not_seed(tmp_path):
    a = _read(sims.simulate("friedman", setting="target", n=50, seed=1, out=tmp_path / "a.h5"))
    b = _read(sims.simulate("friedman", setting="target", n=50, seed=2, out=tmp_path / "b.h5"))
    assert a[2] == b[2] and a[2]["q"] == 1.0 and a[2]["a"] != [1.0] * 4
    assert not np.array_equal(a[0], b[0])
    c = _read(sims.simulate("friedman", setting="target", n=50, seed=1, out=tmp_path / "c.h5",
                            q=2.0))
    assert c[2]["a"] != a[2]["a"]
    # a file is reproducible from its own metadata
    again = {k: v for k, v in a[2].items()}
    d = _read(sims.simulate("friedman", setting="source", n=50, seed=1, out=tmp_path / "d.h5",
                            **again))
    assert np.array_equal(d[1], a[1])


def test_pendulum_small_angle_analytic(tmp_path):
    t = np.linspace(0, 10, 101)[1:]
    gamma, omega, th0 = 0.2, 1.3, 1e-3
    traj = pendulum.integrate(np.array([th0]), np.array([0.0]), gamma, omega, t)[0]
    wd = np.sqrt(omega**2 - gamma**2 / 4)
    exact = th0 * np.exp(-gamma * t / 2) * (np.cos(wd * t) + gamma / (2 * wd) * np.sin(wd * t))
    assert np.abs(traj[0] - exact).max() < 1e-3 * th0  # nonlinearity is O(theta^2)


def test_pendulum_conserves_energy_without_damping(tmp_path):
    path = sims.simulate("pendulum", setting="source", n=20, seed=0, out=tmp_path / "p.h5",
                         gamma=0.0)
    x, y, params, coords = _read(path)
    assert y.shape == (20, 2, params["nt"]) and coords["t"].shape == (params["nt"],)
    w = params["omega"]
    e0 = 0.5 * x[:, 1].astype(np.float64) ** 2 + w**2 * (1 - np.cos(x[:, 0]))
    traj = pendulum.integrate(x[:, 0].astype(np.float64), x[:, 1].astype(np.float64), 0.0, w,
                              coords["t"])
    e = 0.5 * traj[:, 1] ** 2 + w**2 * (1 - np.cos(traj[:, 0]))
    assert np.abs(e - e0[:, None]).max() < 1e-7
    assert np.allclose(traj, y, atol=1e-5)  # the file holds the same trajectories


@pytest.mark.parametrize("nu", [0.05, 0.01])
def test_burgers_matches_cole_hopf(nu):
    x = burgers.grid(burgers.solve_points(128))
    u = burgers.solve(np.sin(2 * np.pi * x)[None], nu, 0.5)[0]
    exact = burgers.cole_hopf_sine(x, 0.5, nu)
    assert np.linalg.norm(u - exact) / np.linalg.norm(exact) < 1e-6


def test_burgers_random_states_resolved_and_mean_conserved(tmp_path):
    x, y, params, coords = _read(sims.simulate("burgers1d", setting="target", n=6, seed=0,
                                               out=tmp_path / "b.h5"))
    assert x.shape == y.shape == (6, 1, 128) and params["nu"] == 0.01
    assert np.allclose(coords["x"], np.arange(128) / 128)
    assert np.abs(x.mean(-1) - y.mean(-1)).max() < 1e-6
    # the chosen resolution is accurate to well under 1 %: compare with twice the grid
    rng = np.random.default_rng(0)
    u0 = burgers.random_initial(rng, 4, 1024, 5, 1.0)
    fine = burgers.solve(u0, 0.01, 0.5)[:, ::2]
    coarse = burgers.solve(u0[:, ::2], 0.01, 0.5)
    assert (np.linalg.norm(coarse - fine, axis=1) / np.linalg.norm(fine, axis=1)).max() < 1e-3


def test_darcy_poisson_series_second_order():
    errs = []
    for nx in (9, 17, 33):
        g = darcy.grid(nx)
        u = darcy.solve(np.ones((nx, nx)), 1.0)
        errs.append(np.abs(u - darcy.poisson_series(g, g, 1.0)).max())
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(rates > 1.9), rates


def test_darcy_maximum_principle_and_two_valued_field(tmp_path):
    x, y, params, coords = _read(sims.simulate("darcy2d", setting="target", n=8, seed=0,
                                               out=tmp_path / "d.h5", nx=24))
    assert x.shape == y.shape == (8, 1, 24, 24)
    assert set(np.unique(x)) == {params["a_low"], params["a_high"]}
    assert y.min() >= 0 and np.all(y[:, :, 0, :] == 0) and np.all(y[:, :, :, -1] == 0)
    assert (y > 0).any()


def test_diode_devsim_run(tmp_path, monkeypatch):
    monkeypatch.setenv(diode.WORKERS_ENV, "1")
    path = sims.simulate("diode", setting="target", n=2, seed=0, out=tmp_path / "dio.h5",
                         nv=5, v_max=0.5)
    x, y, params, coords = _read(path)
    assert x.shape == (2, 2) and y.shape == (2, 5)
    assert np.allclose(coords["V"], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert np.all((x >= 15) & (x <= 18))
    assert np.all(np.diff(y, axis=1) > 0), "current must rise with bias"
    vt = diode.K_B_EV * params["temperature"]
    slope = (y[:, 1] - y[:, 0]) * np.log(10) / (coords["V"][1] - coords["V"][0])
    ideality = 1 / (vt * slope)
    assert np.all((ideality > 1) & (ideality < 2)), ideality
    with h5py.File(path) as f:
        assert list(f["params"].attrs["names"]) == ["log10_NA", "log10_ND"]
        assert list(f["inputs"].attrs["names"]) == ["log10_NA", "log10_ND"]
    assert diode.intrinsic_density(300) == pytest.approx(6.1e9, rel=0.05)


@pytest.mark.parametrize("args,match", [
    (["nosuch", "--n", "3", "--out", "X"], "unknown simulator 'nosuch'"),
    (["friedman", "--n", "3", "--out", "X", "--set", "zeta=1"], "unknown parameter 'zeta'"),
    (["friedman", "--n", "3", "--out", "X", "--set", "noise=-1"], "'noise' = -1.0 is outside"),
    (["friedman", "--n", "3", "--out", "X", "--set", "a=1,2"], "'a' needs 4 values"),
    (["friedman", "--n", "3", "--out", "X", "--setting", "middle"], "unknown setting 'middle'"),
    (["darcy2d", "--n", "3", "--out", "X", "--set", "a_low=20"], "a_low (20.0) must not exceed"),
    (["friedman", "--n", "0", "--out", "X"], "n must be a positive integer"),
    (["friedman", "--out", "X"], "missing --n"),
])
def test_cli_errors_are_one_line_exit_2_no_file(tmp_path, cli, args, match):
    args = [str(tmp_path / "out.h5") if a == "X" else a for a in args]
    code, _, err = cli("simulate", *args)
    assert code == 2 and match in err, err
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_cli_simulate_list_and_run(tmp_path, cli):
    code, out, _ = cli("simulate", "--list")
    assert code == 0
    for name in ("friedman", "pendulum", "burgers1d", "darcy2d", "diode"):
        assert f"{name}:" in out
    assert "temperature     K" in out
    path = tmp_path / "f.h5"
    cmd = ["simulate", "friedman", "--setting", "target", "--n", "40", "--seed", "3",
           "--out", str(path), "--set", "q=0.5"]
    assert cli(*cmd)[0] == 0
    assert H5Dataset(path).info.params["q"] == 0.5
    code, _, err = cli(*cmd)
    assert code == 2 and "exists" in err


@pytest.mark.parametrize("name,params", [
    ("friedman", {"a", "b", "c", "q", "noise"}),
    ("pendulum", {"gamma", "omega", "t_final", "nt"}),
    ("burgers1d", {"nu", "t_final", "nx"}),
    ("darcy2d", {"a_low", "a_high", "length_scale", "forcing", "nx"}),
    ("diode", {"temperature", "tau"}),
])
def test_contract_names(name, params):
    sim = sims.get(name)
    assert params <= {p.name for p in sim.params}
    assert set(sim.settings) == {"source", "target"}
