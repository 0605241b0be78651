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
