"""Typed suite configuration: options, grids, selection and training settings are checked
when the suite loads; a bad key or value names the file, the section and the key."""

from __future__ import annotations

import pytest
from test_bench import _suite

from pacsim.bench import SuiteError, load_suite
from pacsim.transfer import Options, SelectionConfig


def test_typed_suite(tmp_path):
    path = _suite(tmp_path, methods=("finetune", "l2sp", "pac"), top='selection = "cv"',
                  extra="[method.l2sp]\nalpha = 1\ngrid = { lr = [1e-3, 1e-2] }",
                  train="lr = 0.002\noptimizer = \"adamw\"", pair="source_epochs = 3")
    suite = load_suite(path)
    pac, l2sp, ft = (suite.methods[m] for m in ("pac", "l2sp", "finetune"))
    assert isinstance(pac.options, Options) and pac.options.ratio == 0.5 and pac.grid is None
    assert l2sp.options.alpha == 1.0 and isinstance(l2sp.options.alpha, float)
    assert l2sp.grid == {"lr": [1e-3, 1e-2]} and ft.options.to_dict() == {}
    assert suite.selection == SelectionConfig(mode="cv")
    train = suite.pairs["fried"].train
    assert (train.lr, train.optimizer, train.source_epochs, train.target_steps) == \
        (0.002, "adamw", 3, 4)
    assert load_suite(_suite(tmp_path)).selection == SelectionConfig(mode="fixed")


def test_a_pair_may_set_its_own_method_options(tmp_path):
    plain = load_suite(_suite(tmp_path))
    path = _suite(tmp_path, pair='method = { pac = { scope = "layer", ratio = 0.4 } }')
    suite = load_suite(path)
    own = suite.method("fried", "pac").options
    assert (own.scope, own.ratio) == ("layer", 0.4)
    assert suite.methods["pac"].options.ratio == 0.5  # the suite's own stays
    cells = suite.cells()
    for cell in cells:  # only the overridden method's cells change identity
        same = suite.cell_id(cell) == plain.cell_id(cell)
        assert same == (cell.method != "pac"), cell
        if cell.method == "pac":
            assert suite.identity(cell)["config"]["options"]["scope"] == "layer"


def test_a_pairs_own_options_keep_the_suites_allocate_stop(tmp_path):
    """A pair's own pac table overrides only what it names: the suite's allocate stop
    ("reference", which a cell's identity leaves out) is kept, not reset to the default."""
    path = _suite(tmp_path, extra='[method.pac]\nratio = 0.5\nallocate_stop = "reference"',
                  pair="method = { pac = { ratio = 0.4 } }")
    suite = load_suite(path)
    own = suite.method("fried", "pac").options
    assert (own.ratio, own.allocate_stop) == (0.4, "reference")
    cell = next(c for c in suite.cells() if c.method == "pac")
    assert "allocate_stop" not in suite.identity(cell)["config"]["options"]


BAD = [
    # (where, text, words the one-line message must hold)
    ("extra", "[method.pac]\nratoi = 0.5", ["[method.pac]", "'ratoi'"]),
    ("extra", "[method.finetune]\nalpha = 5", ["[method.finetune]", "'alpha'"]),
    ("l2sp", "[method.l2sp]\nalpha = -1.0", ["[method.l2sp]", "alpha"]),
    ("l2sp", "[method.l2sp]\nalpha = 'big'", ["[method.l2sp]", "'alpha'", "float"]),
    ("extra", "[method.pac]\ngrid = { ratio = [0.5, 0.6] }", ["[method.pac]", "grid", "ratio"]),
    ("extra", "[method.pac]\ngrid = { lamb = [0.1] }", ["[method.pac]", "grid", "'lamb'"]),
    ("train", "batch_size = 0", ["[train]", "batch_size"]),
    ("steps", "0", ["[train]", "target_steps"]),
    ("train", "lr = -1", ["[train]", "lr"]),
    ("train", "lr = 'fast'", ["[train]", "lr"]),
    ("train", "weight_decay = -0.1", ["[train]", "weight_decay"]),
    ("train", "optimizer = 'adagrad'", ["[train]", "optimizer", "adagrad"]),
    ("train", "source_batch_size = 2.5", ["[train]", "source_batch_size", "integer"]),
    ("train", "batchsize = 3", ["[train]", "'batchsize'"]),
    ("pair", "source_epochs = 0", ["[pair.fried]", "source_epochs"]),
    ("pair", "n_sourc = 10", ["[pair.fried]", "'n_sourc'"]),
    ("pair", "n_source = 'many'", ["[pair.fried]", "n_source"]),
    ("model", '{ name = "mlp", hiden = [8] }', ["[pair.fried]", "model", "'hiden'"]),
    ("model", '{ name = "mlp", in_dim = 3 }', ["[pair.fried]", "model", "'in_dim'"]),
    ("top", 'selection = "grid"', ["selection", "grid"]),
    ("top", "selection = { mode = 'cv', folds = 1 }", ["selection", "folds"]),
    ("seeds", "[0, 0]", ["seeds", "duplicate"]),
    ("seeds", "[-1]", ["seeds"]),
    ("n_target", "[5, 5]", ["n_target", "duplicate"]),
    ("methods", '["pac", "pac"]', ["methods", "duplicate"]),
    ("pair", 'method = { pac = { ratoi = 0.5 } }', ["[pair.fried.method.pac]", "'ratoi'"]),
    ("pair", 'method = { l2sp = { alpha = 1.0 } }', ["[pair.fried.method]", "l2sp"]),
]


@pytest.mark.parametrize("where,text,words", BAD, ids=[b[1].split("\n")[-1] for b in BAD])
def test_bad_values_refused_at_load(tmp_path, where, text, words):
    if where == "l2sp":
        path = _suite(tmp_path, methods=("finetune", "l2sp"), extra=text)
    elif where == "steps":
        path = _suite(tmp_path, steps=int(text))
    elif where == "seeds":
        path = _suite(tmp_path, seeds=eval(text))
    elif where == "n_target":
        path = _suite(tmp_path, n_target=eval(text))
    elif where == "methods":
        path = _suite(tmp_path, methods=eval(text))
    else:
        path = _suite(tmp_path, **{where: text})
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    for w in words:
        assert w in msg, (w, msg)


def test_bad_option_cli_one_line_exit_2(tmp_path, cli):
    path = _suite(tmp_path, extra="[method.pac]\nratoi = 0.5")
    code, _, err = cli("bench", path, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1
    assert "suite.toml: [method.pac]" in err and "'ratoi'" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "data").exists()
