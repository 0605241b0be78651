"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from conftest import make_data

README = Path(__file__).resolve().parents[1] / "README.md"


class MyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(),
                                        torch.nn.Linear(32, 2))

    def forward(self, x):
        return self.body(x)


def test_readme_example_runs(capsys):
    block = re.search(r"## PAC on your own model\n\n```python\n(.*?)```", README.read_text(),
                      re.S).group(1)
    (xs, ys), (xt, yt) = make_data("mlp", n=64, seed=1), make_data("mlp", n=32, seed=2, shift=1)
    (xst, yst), (xtt, ytt) = make_data("mlp", seed=3), make_data("mlp", seed=4, shift=1)
    env = {"MyNet": MyNet, "X_src": xs, "Y_src": ys, "X_tgt": xt, "Y_tgt": yt,
           "X_src_test": xst, "Y_src_test": yst, "X_tgt_test": xtt, "Y_tgt_test": ytt}
    torch.manual_seed(0)
    exec(compile(block, str(README), "exec"), env)
    out = capsys.readouterr().out
    assert "target {" in out and "source {" in out


def test_readme_data_example_runs(tmp_path, monkeypatch):
    import numpy as np

    block = re.search(r"## Data: the `pacsim-h5` format\n.*?```python\n(.*?)```",
                      README.read_text(), re.S).group(1)
    rng = np.random.default_rng(0)

    def blocks():
        for _ in range(3):
            x = rng.normal(size=(20, 1, 256)).astype(np.float32)
            yield x, 2 * x

    monkeypatch.chdir(tmp_path)
    env = {"X": rng.normal(size=(40, 3)), "Y": rng.normal(size=(40, 1)), "blocks": blocks}
    exec(compile(block, str(README), "exec"), env)
    xb, yb = next(iter(env["batches"]))
    assert xb.shape == (32, 3) and yb.shape == (32, 1)
    assert (tmp_path / "big.h5").exists()


def test_readme_selection_example_runs(capsys):
    from conftest import make_model

    block = re.search(r"## Every method behind one interface.*?```python\n(.*?)```",
                      README.read_text(), re.S).group(1)
    block = block.replace("steps=500", "steps=3")  # the API as written, a tiny budget
    (xs, ys), (xt, yt) = make_data("mlp", n=64, seed=1), make_data("mlp", n=10, seed=2, shift=1)
    env = {"source_model": make_model("mlp"), "X_src": xs, "Y_src": ys, "X_tgt": xt,
           "Y_tgt": yt, "X_src_val": xs[:16], "Y_src_val": ys[:16]}
    exec(compile(block, str(README), "exec"), env)
    out = capsys.readouterr().out
    assert "'subspace'" in out and "'lr'" in out


def test_readme_more_settings_example_runs(capsys):
    from conftest import make_model

    from pacsim import pac
    from pacsim.train import evaluate

    block = re.search(r"### More settings in one network\n\n```python\n(.*?)```",
                      README.read_text(), re.S).group(1)
    model = make_model("mlp")
    masks = pac.prune(model, ratio=0.8)
    pac.allocate(model, masks, make_data("mlp", seed=1), epochs=2, seed=0)
    (xt, yt), (xh, yh) = make_data("mlp", seed=2, shift=0.5), make_data("mlp", seed=3, shift=1)
    tests = {s: make_data("mlp", n=16, seed=9, shift=sh)
             for s, sh in (("source", 0.0), ("target", 0.5), ("hot", 1.0))}
    env = {"pac": pac, "evaluate": evaluate, "model": model, "masks": masks, "X_t1": xt,
           "Y_t1": yt, "X_hot": xh, "Y_hot": yh,
           "X_test": {s: v[0] for s, v in tests.items()},
           "Y_test": {s: v[1] for s, v in tests.items()}}
    exec(compile(block, str(README), "exec"), env)
    out = capsys.readouterr().out
    assert "source {" in out and "target {" in out and "hot {" in out
