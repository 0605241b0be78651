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
