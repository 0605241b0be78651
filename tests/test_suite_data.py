"""Data files are checked against their recipe (simulator, setting, physics, size, seed,
splits) and rebuilt when they no longer match; swapped sides are recognised."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_recipes import SMALL

from pacsim.data import H5Dataset
from pacsim.sims import recipes


def _recipe(tmp_path: Path, text: str = SMALL) -> recipes.Recipe:
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return recipes.load(path)


def _mtimes(paths: dict[str, Path]) -> dict[str, int]:
    return {k: p.stat().st_mtime_ns for k, p in paths.items()}


def test_matching_files_are_kept(tmp_path):
    built = tmp_path / "built"
    paths = recipes.build(_recipe(tmp_path), built, log=lambda m: None)
    before = _mtimes(paths)
    assert all(recipes.check_file(_recipe(tmp_path), s, built) is None for s in recipes.SIDES)
    logs: list[str] = []
    recipes.build(_recipe(tmp_path), built, log=logs.append)
    assert _mtimes(paths) == before and all("skipped" in m for m in logs)


@pytest.mark.parametrize("edit,side,words", [
    (("n = 30", "n = 40"), "source", ["30 samples", "40"]),
    (("q = 2.0", "q = 3.0"), "target", ["params", "q"]),
    (("seed = 4", "seed = 5"), "source", ["seed"]),
    (("split = [0.5, 0.0, 0.5]", "split = [0.6, 0.0, 0.4]"), "target", ["split"]),
    (('simulator = "friedman"', 'simulator = "pendulum"'), "source", ["simulator"]),
])
def test_mismatching_file_is_rebuilt(tmp_path, edit, side, words):
    built = tmp_path / "built"
    paths = recipes.build(_recipe(tmp_path), built, log=lambda m: None)
    other = "target" if side == "source" else "source"
    text = SMALL.replace(*edit)
    if edit[0].startswith("simulator"):  # a pendulum recipe keeps no friedman overrides
        text = text.replace("q = 2.0\n", "").replace("noise = 0.5\n", "")
    recipe = _recipe(tmp_path, text)
    reason = recipes.check_file(recipe, side, built)
    assert reason is not None and all(w in reason for w in words), reason
    logs: list[str] = []
    recipes.build(recipe, built, log=logs.append)
    assert any(f"tiny_{side}.h5" in m and "rebuilt" in m and words[0] in m for m in logs), logs
    assert recipes.check_file(recipe, side, built) is None
    if not edit[0].startswith(("seed", "simulator")):
        assert not any(f"tiny_{other}.h5" in m and "rebuilt" in m for m in logs)
    assert paths[side].exists()


def test_swapped_files_are_recognised_and_rebuilt(tmp_path):
    built = tmp_path / "built"
    recipe = _recipe(tmp_path)
    paths = recipes.build(recipe, built, log=lambda m: None)
    tmp = built / "x.h5"
    paths["source"].rename(tmp)
    paths["target"].rename(paths["source"])
    tmp.rename(paths["target"])
    for side in recipes.SIDES:
        assert "swapped" in recipes.check_file(recipe, side, built)
    recipes.build(recipe, built, log=lambda m: None)
    assert H5Dataset(paths["source"], "train").info.attrs["setting"] == "source"
    assert H5Dataset(paths["target"], "test").info.params["q"] == 2.0


def test_unreadable_or_missing_file(tmp_path):
    built = tmp_path / "built"
    built.mkdir()
    recipe = _recipe(tmp_path)
    assert recipes.check_file(recipe, "source", built) == "missing"
    recipe.file(built, "source").write_bytes(b"not hdf5 at all")
    assert "unreadable" in recipes.check_file(recipe, "source", built)
    logs: list[str] = []
    recipes.build(recipe, built, log=logs.append)
    assert recipes.check_file(recipe, "source", built) is None
    assert any("rebuilt" in m and "unreadable" in m for m in logs)


def test_pairs_with_the_same_data_share_its_files(tmp_path):
    """Two pairs of one recipe and sizes (a CNN and an FNO on one PDE, say) read one set of
    files, simulated once; a pair with other sizes gets its own. Identity is unchanged."""
    from test_bench import RECIPE, _suite

    from pacsim.bench import load_suite
    from pacsim.bench.runner import RunOptions, run_suite

    extra = """
[pair.fried2]
recipe = "tiny.toml"
model = { name = "mlp", hidden = [4] }
[pair.bigger]
recipe = "tiny.toml"
model = { name = "mlp", hidden = [8] }
n_source = 200
"""
    (tmp_path / "tiny.toml").write_text(RECIPE)
    path = _suite(tmp_path, seeds=(0,), methods=("finetune",), n_target=(5,))
    path.write_text(path.read_text() + extra)
    suite = load_suite(path)
    files = {p: spec.recipe.file(suite.data_dir, "source") for p, spec in suite.pairs.items()}
    assert files["fried2"] == files["fried"] and files["bigger"] != files["fried"]
    assert [r.name for r in suite.data_recipes()] == ["fried", "bigger"]
    assert (suite.source_config("fried", 0)["data"] == suite.source_config("fried2", 0)["data"])
    logs: list[str] = []
    run_suite(path, tmp_path / "out", RunOptions(devices="cpu"), log=logs.append)
    built = sorted(p.name for p in (tmp_path / "data").glob("*.h5"))
    assert built == ["bigger_source.h5", "bigger_target.h5", "fried_source.h5",
                     "fried_target.h5"]
    assert sum("samples of friedman" in m for m in logs) == 4, logs
