"""Dataset recipes: parsing, clear errors, building with skip-if-built."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsim.data import H5Dataset
from pacsim.sims import SimulationError, recipes

ROOT = Path(__file__).resolve().parents[1]

SMALL = """
name = "tiny"
simulator = "friedman"
seed = 4
[source]
setting = "source"
n = 30
[target]
setting = "target"
n = 20
split = [0.5, 0.0, 0.5]
[target.set]
q = 2.0
"""


def test_shipped_recipes_are_valid():
    files = recipes.find(ROOT / "datasets")
    names = {recipes.load(f).name for f in files}
    assert names == {"friedman", "pendulum", "burgers1d", "darcy2d", "diode"}
    for f in files:
        r = recipes.load(f)
        assert r.parts["source"].setting == "source" and r.parts["target"].setting == "target"
        assert "| `" + r.name + "`" in (ROOT / "datasets" / "README.md").read_text()


def test_build_and_skip(tmp_path):
    rec = tmp_path / "tiny.toml"
    rec.write_text(SMALL)
    logs: list[str] = []
    paths = recipes.build_all([rec], tmp_path / "built", log=logs.append)["tiny"]
    tgt = H5Dataset(paths["target"], "test", normalize=False)
    assert tgt.info.params["q"] == 2.0 and len(tgt) == 10 and tgt.info.attrs["seed"] == 5
    assert H5Dataset(paths["source"], "train").info.attrs["seed"] == 4
    mtime = paths["source"].stat().st_mtime_ns
    recipes.build_all([rec], tmp_path / "built", log=logs.append)
    assert paths["source"].stat().st_mtime_ns == mtime and any("skipped" in x for x in logs)


@pytest.mark.parametrize("text,match", [
    ("name = 'x'\nsimulator = 'friedman'\n[source]\nsetting='source'\nn=3\n", "lacks 'target'"),
    ("this is not toml ][", "not valid TOML"),
    (SMALL.replace('n = 30', 'n = "many"'), "bad recipe value"),
])
def test_bad_recipes(tmp_path, cli, text, match):
    rec = tmp_path / "bad.toml"
    rec.write_text(text)
    with pytest.raises(SimulationError, match=match):
        recipes.load(rec)
    code, _, err = cli("datasets", rec, "--out", tmp_path / "b")
    assert code == 2 and "bad.toml" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()
