"""1D silicon PN junction in forward bias, solved by DEVSIM (drift-diffusion with SRH).

Inputs (N, 2): acceptor and donor doping of the p and n sides, as log10(cm^-3), drawn
uniformly in [log_doping_min, log_doping_max] (also stored as per-sample ``params``).
Targets (N, nV): log10 of the current density (A/cm^2) at the bias points ``coords/V``.
The task is set by the lattice ``temperature`` (K) and the SRH carrier lifetime ``tau``
(s, taken equal for electrons and holes).

Physics: DEVSIM's silicon drift-diffusion models (Scharfetter-Gummel currents, SRH
recombination, ohmic contacts). pacsim makes them temperature dependent: the intrinsic
density n_i = sqrt(Nc Nv) exp(-Eg / 2kT) with Nc, Nv ~ T^1.5 and Varshni's Eg(T), and
mobilities ~ (T/300 K)^-1.5. The device is 10 um long with an abrupt junction in the
middle; each sample is simulated in its own DEVSIM device, samples are spread over
worker processes (one per core, or ``PACSIM_SIM_WORKERS``) and written by one writer.
The workers end with the run: an interrupt or an error terminates the pool, and a worker
whose parent dies (even by SIGKILL) is killed too.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import os
import signal
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import procutil
from .base import Param, SimulationError, Simulator, blocks_of, register

LENGTH_CM = 1e-3
K_B_EV = 8.617333e-5
BLOCK = 32
WORKERS_ENV = "PACSIM_SIM_WORKERS"  # worker processes; default one per CPU core
_counter = [0]


def intrinsic_density(temperature: float) -> float:
    """Silicon n_i (cm^-3) at ``temperature`` (K)."""
    t = temperature
    eg = 1.17 - 4.73e-4 * t * t / (t + 636.0)
    nc = 2.8e19 * (t / 300.0) ** 1.5
    nv = 1.04e19 * (t / 300.0) ** 1.5
    return float(np.sqrt(nc * nv) * np.exp(-eg / (2 * K_B_EV * t)))


def _devsim() -> Any:
    """Import DEVSIM with the UMFPACK direct solver it ships.

    UMFPACK is used instead of the default MKL PARDISO because PARDISO reports spurious
    floating-point exceptions during factorisation on some CPUs (seen on AMD EPYC), which
    DEVSIM treats as a failed solve.
    """
    try:
        import devsim
        import devsim.umfpack.umfshim  # noqa: F401 - selects the UMFPACK solver
        from devsim.python_packages import simple_physics  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure to load the native library
        raise SimulationError(
            f"diode: DEVSIM cannot start ({str(exc).splitlines()[0][:160]}); install the "
            "'device' extra: pip install 'pacsim[device]' (DEVSIM plus a BLAS such as mkl)"
        ) from None
    return devsim


def bias_points(p: dict[str, Any]) -> np.ndarray:
    """The anode voltages (V) at which the current is recorded."""
    return np.linspace(p["v_min"], p["v_max"], p["nv"])


def iv_curve(log_na: float, log_nd: float, temperature: float, tau: float,
             biases: np.ndarray) -> np.ndarray:
    """Current density |J| (A/cm^2) of one diode at each bias in ``biases`` (increasing).

    DEVSIM's solver log is swallowed; a failed solve raises :class:`SimulationError`.
    """
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        try:
            return _iv_curve(log_na, log_nd, temperature, tau, biases)
        except Exception as exc:
            if isinstance(exc, SimulationError):
                raise
            raise SimulationError(
                f"diode: DEVSIM failed for log10 NA={log_na:.3f}, log10 ND={log_nd:.3f} "
                f"({str(exc).splitlines()[0][:120]})") from None


def _iv_curve(log_na: float, log_nd: float, temperature: float, tau: float,
              biases: np.ndarray) -> np.ndarray:
    devsim = _devsim()
    from devsim.python_packages import simple_physics as sp
    from devsim.python_packages.model_create import CreateNodeModel, CreateSolution

    _counter[0] += 1
    name = f"pacsim_diode_{os.getpid()}_{_counter[0]}"
    region = "bulk"
    mid = LENGTH_CM / 2
    devsim.create_1d_mesh(mesh=name)
    devsim.add_1d_mesh_line(mesh=name, pos=0.0, ps=1e-5, tag="anode")
    devsim.add_1d_mesh_line(mesh=name, pos=mid, ps=1e-7, tag="junction")
    devsim.add_1d_mesh_line(mesh=name, pos=LENGTH_CM, ps=1e-5, tag="cathode")
    devsim.add_1d_contact(mesh=name, name="anode", tag="anode", material="metal")
    devsim.add_1d_contact(mesh=name, name="cathode", tag="cathode", material="metal")
    devsim.add_1d_region(mesh=name, material="Si", region=region, tag1="anode",
                         tag2="cathode")
    devsim.finalize_mesh(mesh=name)
    devsim.create_device(mesh=name, device=name)
    try:
        sp.SetSiliconParameters(name, region, temperature)
        ni = intrinsic_density(temperature)
        scale = (temperature / 300.0) ** -1.5
        for key, value in (("n_i", ni), ("n1", ni), ("p1", ni), ("taun", tau),
                           ("taup", tau), ("mu_n", sp.mu_n * scale),
                           ("mu_p", sp.mu_p * scale)):
            devsim.set_parameter(device=name, region=region, name=key, value=value)
        CreateNodeModel(name, region, "Acceptors", f"{10**log_na:.6e}*step({mid:.6e}-x)")
        CreateNodeModel(name, region, "Donors", f"{10**log_nd:.6e}*step(x-{mid:.6e})")
        CreateNodeModel(name, region, "NetDoping", "Donors-Acceptors")
        CreateSolution(name, region, "Potential")
        sp.CreateSiliconPotentialOnly(name, region)
        for c in ("anode", "cathode"):
            devsim.set_parameter(device=name, name=sp.GetContactBiasName(c), value=0.0)
            sp.CreateSiliconPotentialOnlyContact(name, region, c)
        devsim.solve(type="dc", absolute_error=1.0, relative_error=1e-12, maximum_iterations=50)
        for carrier, init in (("Electrons", "IntrinsicElectrons"), ("Holes", "IntrinsicHoles")):
            CreateSolution(name, region, carrier)
            devsim.set_node_values(device=name, region=region, name=carrier, init_from=init)
        sp.CreateSiliconDriftDiffusion(name, region)
        for c in ("anode", "cathode"):
            sp.CreateSiliconDriftDiffusionAtContact(name, region, c)
        _solve(devsim)
        currents = np.empty(len(biases))
        v = 0.0
        for i, target in enumerate(biases):
            v = _ramp(devsim, name, sp.GetContactBiasName("anode"), v, float(target))
            currents[i] = abs(
                devsim.get_contact_current(device=name, contact="anode",
                                           equation="ElectronContinuityEquation")
                + devsim.get_contact_current(device=name, contact="anode",
                                             equation="HoleContinuityEquation"))
        return currents
    finally:
        devsim.delete_device(device=name)
        devsim.delete_mesh(mesh=name)


def _solve(devsim: Any) -> None:
    devsim.solve(type="dc", absolute_error=1e10, relative_error=1e-10, maximum_iterations=40)


def _ramp(devsim: Any, device: str, bias_name: str, v: float, target: float,
          max_step: float = 0.05) -> float:
    """Move the anode bias from ``v`` to ``target``, halving steps that do not converge."""
    step = max_step
    while v < target - 1e-12:
        nxt = min(target, v + step)
        devsim.set_parameter(device=device, name=bias_name, value=nxt)
        try:
            _solve(devsim)
        except devsim.error:
            step /= 2
            if step < 1e-4:
                raise SimulationError(f"diode: no convergence at {nxt:.4f} V") from None
            devsim.set_parameter(device=device, name=bias_name, value=v)
            _solve(devsim)
            continue
        v = nxt
    return v


def _curves(args: tuple[np.ndarray, float, float, np.ndarray]) -> np.ndarray:
    dopings, temperature, tau, biases = args
    return np.stack([iv_curve(na, nd, temperature, tau, biases) for na, nd in dopings])


def _init_worker(parent: int) -> None:
    """A worker ends with its parent, even one killed by SIGKILL, and leaves stop signals
    to it: Ctrl-C reaches the whole process group, and the parent terminates the pool."""
    procutil.die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in procutil.SIGNALS[1:]:
        signal.signal(sig, signal.SIG_DFL)  # terminate() stops a worker even inside DEVSIM


def _generate(n: int, p: dict[str, Any], rng: np.random.Generator) -> Iterator[tuple[Any, ...]]:
    _devsim()
    biases = bias_points(p)

    def jobs() -> Iterator[tuple[np.ndarray, float, float, np.ndarray]]:
        for lo, hi in blocks_of(n, BLOCK):  # drawn block by block: memory stays bounded
            yield (rng.uniform(p["log_doping_min"], p["log_doping_max"], size=(hi - lo, 2)),
                   p["temperature"], p["tau"], biases)

    n_jobs = -(-n // BLOCK)
    workers = min(int(os.environ.get(WORKERS_ENV, 0)) or os.cpu_count() or 1, n_jobs)
    if workers <= 1:
        for job in jobs():
            yield job[0], np.log10(_curves(job)), job[0]
        return
    # the dopings are drawn in this process, in order, so the pool sees them as they go
    drawn: deque[np.ndarray] = deque()

    def recorded() -> Iterator[tuple[np.ndarray, float, float, np.ndarray]]:
        for job in jobs():
            drawn.append(job[0])
            yield job

    fork = sys.platform.startswith("linux")  # the workers' parent must be this process
    pool = mp.get_context("fork" if fork else None).Pool(workers, initializer=_init_worker,
                                       initargs=(os.getpid(),))
    try:
        for j in pool.imap(_curves, recorded()):
            dop = drawn.popleft()
            yield dop, np.log10(j), dop
        pool.close()
    finally:
        pool.terminate()  # workers stop at once, also on an interrupt or an error
        pool.join()


def _finalize(p: dict[str, Any], setting: str) -> dict[str, Any]:
    if p["log_doping_min"] > p["log_doping_max"]:
        raise SimulationError("diode: log_doping_min must not exceed log_doping_max")
    if p["v_min"] >= p["v_max"]:
        raise SimulationError("diode: v_min must be below v_max")
    return p


SIMULATOR = register(Simulator(
    name="diode",
    summary="silicon PN diode (DEVSIM drift-diffusion + SRH), dopings -> log10 J(V)",
    params=(
        Param("temperature", "K", "lattice temperature", 300.0, 200, 500),
        Param("tau", "s", "SRH carrier lifetime of electrons and holes", 1e-6, 1e-12, 1e-2),
        Param("log_doping_min", "log10 cm^-3", "lowest sampled doping", 15.0, 13, 19),
        Param("log_doping_max", "log10 cm^-3", "highest sampled doping", 18.0, 13, 19),
        Param("v_min", "V", "first anode bias", 0.1, 0.0, 1.5),
        Param("v_max", "V", "last anode bias", 0.8, 0.01, 1.5),
        Param("nv", "-", "bias points", 15, 2, 200, kind="int"),
    ),
    settings={"source": {}, "target": {"temperature": 350.0, "tau": 1e-8}},
    generate=_generate,
    shapes=lambda p: ((2,), (p["nv"],)),
    coords=lambda p: {"V": bias_points(p)},
    input_names=lambda p: ["log10_NA", "log10_ND"],
    sample_param_names=("log10_NA", "log10_ND"),
    finalize=_finalize,
    describe="300 K, 1 us lifetime -> 350 K, 10 ns: n_i grows ~25x and recombination "
             "100x faster, lifting the low-bias current and bending the I-V curve",
))
