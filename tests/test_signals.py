"""Stop signals, temporary files, worker processes and impossible sizes (issue 13)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pacsim import procutil
from pacsim.data import DatasetWriter

PACSIM = [sys.executable, "-m", "pacsim"]
STOP = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture(autouse=True)
def _default_stop_handlers():
    """Python's own handlers, whatever an earlier test left behind (an in-process Ray
    installs its own SIGTERM handler, which pacsim rightly leaves alone)."""
    saved = {s: signal.getsignal(s) for s in STOP}
    for s in STOP:
        signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def _writer(path: Path, **kw) -> DatasetWriter:
    return DatasetWriter(path, input_shape=(2,), target_shape=(1,), simulator="t",
                         setting="s", params={}, seed=0, **kw)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _wait_for_temp(proc: subprocess.Popen, folder: Path, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not _temps(folder):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no temporary file appeared"
        time.sleep(0.01)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_swallowed_interrupt_still_stops_the_publish(tmp_path):
    class Finaliser:
        def __del__(self) -> None:  # the interrupt lands here and is swallowed
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10000):
                pass

    out = tmp_path / "x.h5"
    w = _writer(out)
    w.append(np.zeros((4, 2)), np.zeros((4, 1)))
    Finaliser()  # noqa: B018 - dropped at once: __del__ runs now
    with pytest.raises(procutil.Interrupted):
        w.close()
    assert not out.exists() and _temps(tmp_path) == []
    w2 = _writer(out)  # a new writer is not stopped by an old interrupt
    w2.append(np.zeros((4, 2)), np.zeros((4, 1)))
    w2.close()
    assert out.exists()


def test_an_interrupt_during_cleanup_waits_for_it(tmp_path):
    out = tmp_path / "x.h5"
    w = _writer(out)
    with pytest.raises(procutil.Interrupted):
        with procutil.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            w.abort()
    assert _temps(tmp_path) == [] and not out.exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers given back


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_writer_script_stopped_by_term_or_hup_leaves_nothing(tmp_path, sig):
    script = (f"import numpy as np, sys\nfrom pacsim.data import DatasetWriter\n"
              f"w = DatasetWriter({str(tmp_path / 'x.h5')!r}, input_shape=(2,), "
              "target_shape=(1,), simulator='t', setting='s', params={}, seed=0)\n"
              "w.append(np.zeros((4, 2)), np.zeros((4, 1)))\n"
              "print('ready', flush=True)\nimport time\ntime.sleep(30)\nw.close()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _simulate(out: Path, n: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*PACSIM, "simulate", "friedman", "--n", str(n), "--out",
                             str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_simulate_stopped_by_a_signal_publishes_nothing(tmp_path, sig):
    out = tmp_path / "x.h5"
    out.write_bytes(b"precious")
    for delay in (0.0, 0.15, 0.4):
        proc = _simulate(out, 20_000_000, "--overwrite")
        _wait_for_temp(proc, tmp_path)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + sig, err
        assert err.strip().splitlines()[-1] == \
            f"pacsim: interrupted ({signal.Signals(sig).name})"
        assert out.read_bytes() == b"precious"
        assert _temps(tmp_path) == []


@pytest.mark.slow
def test_a_killed_writers_temp_is_swept_and_others_reported(tmp_path, cli):
    out = tmp_path / "x.h5"
    proc = _simulate(out, 20_000_000)
    _wait_for_temp(proc, tmp_path)
    proc.kill()
    proc.communicate()
    [left] = _temps(tmp_path)
    assert f".x.h5.{proc.pid}-" in left  # the temporary name records its writer
    old = tmp_path / ".x.h5.abcd1234.tmp"  # a name without a process id: reported only
    old.write_bytes(b"")
    code, _, err = cli("simulate", "friedman", "--n", "20", "--out", out)
    assert code == 0 and out.exists()
    assert f"removed a stale temporary file (its writer, pid {proc.pid}, is gone)" in err
    assert "a temporary file of another writer" in err and str(old) in err
    assert _temps(tmp_path) == [old.name]
    assert all(line.startswith("pacsim: warning: ") for line in err.splitlines())


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _gone(pids: list[int], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def _diode_with_workers(out: Path) -> tuple[subprocess.Popen, list[int]]:
    pytest.importorskip("devsim")
    from pacsim.sims.base import SimulationError
    from pacsim.sims.diode import _devsim

    try:
        _devsim()
    except SimulationError as exc:
        pytest.skip(str(exc))
    with open(out.parent / "stderr.txt", "w") as err:  # orphans would hold a pipe open
        proc = subprocess.Popen([*PACSIM, "simulate", "diode", "--n", "400", "--out",
                                 str(out)], stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PACSIM_SIM_WORKERS": "2"})
    end = time.monotonic() + 30
    while len(kids := _children(proc.pid)) < 2:
        assert proc.poll() is None, (out.parent / "stderr.txt").read_text()
        assert time.monotonic() < end, "no worker processes appeared"
        time.sleep(0.05)
    time.sleep(0.5)  # the workers are inside DEVSIM
    return proc, kids


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_diode_workers_stop_with_an_interrupt(tmp_path):
    proc, kids = _diode_with_workers(tmp_path / "d.h5")
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)  # to the main process only, not the group
    try:
        proc.wait(timeout=5)
        assert _gone(kids, 5), "worker processes outlived the run"
    finally:
        for pid in [proc.pid, *kids]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 130, (tmp_path / "stderr.txt").read_text()
    assert time.monotonic() - start < 5
    assert _temps(tmp_path) == [] and not (tmp_path / "d.h5").exists()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc")
def test_diode_workers_die_with_a_killed_parent(tmp_path):
    proc, kids = _diode_with_workers(tmp_path / "d.h5")
    proc.kill()
    proc.wait()
    try:
        assert _gone(kids, 5), "worker processes outlived a killed parent"
    finally:
        for pid in kids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_sizes_that_cannot_work_fail_before_writing(tmp_path, cli, monkeypatch):
    from pacsim.sims import base

    out = tmp_path / "x.h5"
    code, _, err = cli("simulate", "diode", "--n", 10**12, "--out", out)
    assert code == 2 and len(err.splitlines()) == 1
    assert "10^12" not in err and "samples need about" in err and "largest file" in err
    monkeypatch.setattr(base.shutil, "disk_usage", lambda p: shutil_usage(10**6))
    code, _, err = cli("simulate", "friedman", "--n", 100_000, "--out", out)
    assert code == 2 and f"but {tmp_path} has 1 MB free" in err
    monkeypatch.undo()
    monkeypatch.setattr(base, "_available_memory", lambda: 10**6)
    code, _, err = cli("simulate", "friedman", "--n", 100_000, "--out", out)
    assert code == 2 and "of memory to finish the file" in err
    assert list(tmp_path.iterdir()) == []


def shutil_usage(free: int):
    import shutil

    return shutil._ntuple_diskusage(10 * free, 9 * free, free)


@pytest.mark.parametrize("name", ["friedman", "pendulum", "burgers1d", "darcy2d", "diode"])
def test_declared_shapes_are_the_simulated_ones(name):
    from pacsim import sims

    sim = sims.get(name)
    params = sim.resolve("source", {})
    try:
        first = next(sim.generate(1, params, np.random.default_rng(0)))
    except sims.SimulationError as exc:  # DEVSIM cannot start here
        pytest.skip(str(exc))
    assert tuple(map(tuple, sim.shapes(params))) == (first[0].shape[1:], first[1].shape[1:])


_FUZZ_RUNNER = """
import contextlib, io, json, sys
from pacsim.cli import main
for f in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["inspect", f])
    print(json.dumps({"file": f, "code": code, "err": err.getvalue()}), flush=True)
"""


@pytest.mark.slow
def test_inspect_of_damaged_files_is_valid_or_one_line(tmp_path):
    from pacsim.data import write_dataset

    rng = np.random.default_rng(13)
    good = tmp_path / "good.h5"
    write_dataset(good, rng.normal(size=(20, 3)), rng.normal(size=(20, 2)), simulator="t",
                  setting="s", params={"a": 1}, seed=0, coords={"x": np.arange(3.0)})
    data = good.read_bytes()
    files = []
    for i in range(300):
        b = bytearray(data)
        if i % 4 == 3:
            b = b[:int(rng.integers(0, len(b)))]
        else:
            for pos in rng.integers(0, len(b), size=int(rng.integers(1, 4))):
                b[pos] = int(rng.integers(0, 256))
        f = tmp_path / f"bad{i:03d}.h5"
        f.write_bytes(bytes(b))
        files.append(str(f))
    res = subprocess.run([sys.executable, "-c", _FUZZ_RUNNER, *files], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    outcomes = [__import__("json").loads(line) for line in res.stdout.splitlines()]
    assert [o["file"] for o in outcomes] == files
    for o in outcomes:
        if o["code"] == 0:
            assert o["err"] == "", o
        else:
            assert o["code"] == 2 and len(o["err"].splitlines()) == 1, o
            assert o["err"].startswith("pacsim inspect: error: ") and o["file"] in o["err"], o


def test_inspect_survives_a_crash_inside_hdf5(tmp_path, cli, monkeypatch):
    from pacsim.data import inspect as inspect_module

    def crash(path, check=False):  # what a damaged file can make HDF5 do
        import faulthandler

        faulthandler.disable()  # no dump of the child's stack in the test output
        os.kill(os.getpid(), signal.SIGSEGV)

    f = tmp_path / "damaged.h5"
    f.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    monkeypatch.setattr(inspect_module, "describe", crash)
    code, out, err = cli("inspect", f)
    assert code == 2 and out == ""
    assert err == (f"pacsim inspect: error: {f}: HDF5 crashed reading it (SIGSEGV); the file "
                   "is damaged or not HDF5\n")


def test_a_stop_signal_inside_a_finaliser_prints_no_traceback(capsys):
    """Python cannot raise from a finaliser, so it prints the exception ("Exception
    ignored in ..."); a stop signal landing there stays quiet and is raised by the next
    check, while other unraisable errors are still printed."""
    import gc
    import signal
    import sys

    from pacsim import procutil

    class Finalised:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    heard: list[BaseException] = []
    before = sys.unraisablehook
    sys.unraisablehook = lambda info: heard.append(info.exc_value)
    try:
        with procutil.handled():
            Finalised(procutil.Interrupted(signal.SIGTERM))
            gc.collect()
            Finalised(RuntimeError("other"))
            gc.collect()
        assert [type(e) for e in heard] == [RuntimeError]
        assert sys.unraisablehook is not procutil._unraisable  # restored
        assert capsys.readouterr().err == ""
    finally:
        sys.unraisablehook = before
