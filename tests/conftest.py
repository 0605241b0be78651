"""Shared tiny models and data for fast, deterministic tests."""

from __future__ import annotations

import pytest
import torch

from pacsim.models import CNN, MLP

torch.set_num_threads(1)


def make_model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "mlp":
        return MLP(4, 2, hidden=(16, 16))
    if kind == "cnn1d":
        return CNN(1, 1, 1, width=6, depth=1, kernel_size=3, padding_mode="circular", norm="batch")
    if kind == "cnn2d":
        return CNN(2, 2, 1, width=4, depth=1, kernel_size=3, norm="batch")
    raise ValueError(kind)


def make_data(kind: str, n: int = 48, seed: int = 0, shift: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        x = torch.rand(n, 4, generator=g)
        y = torch.stack([torch.sin(3 * x[:, 0]) + x[:, 1] + shift, x[:, 2] * x[:, 3] - shift], 1)
    elif kind == "cnn1d":
        x = torch.randn(n, 1, 16, generator=g)
        y = torch.roll(x, 1, dims=-1) * (1 + shift) + 0.1
    else:
        x = torch.randn(n, 2, 8, 8, generator=g)
        y = (x[:, :1] * x[:, 1:] + shift).tanh()
    return x, y


MODEL_KINDS = ("mlp", "cnn1d", "cnn2d")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``pacsim ARGS`` in this process: returns (exit status, stdout, stderr)."""
    from pacsim.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(params=MODEL_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def check_calibrated(allocated: torch.nn.Module, model: torch.nn.Module, masks,
                     may_change) -> list[str]:
    """PAC invariant 3: every essential entry, and every parameter ``may_change(name)``
    does not allow, bit-identical to the allocated model. Returns the pruned tensors
    whose freed entries did move (so callers can check calibrate trained something)."""
    after = dict(model.named_parameters())
    moved = []
    for name, p0 in allocated.named_parameters():
        p1 = after[name]
        if name in masks.essential:
            ess = masks.essential[name]
            assert torch.equal(p1[ess], p0[ess]), name
            if not torch.equal(p1[~ess], p0[~ess]):
                moved.append(name)
        elif not may_change(name):
            assert torch.equal(p1, p0), name
    return moved


def check_source_view(model: torch.nn.Module, masks, allocated: torch.nn.Module,
                      x: torch.Tensor) -> None:
    """PAC invariant 4: the source view gives the allocated model's outputs to the bit,
    and leaving it gives back the target's."""
    from pacsim import pac
    from pacsim.train import predict

    target_out = predict(model, x)
    with pac.source_view(model, masks) as m:
        assert torch.equal(predict(m, x), predict(allocated, x))
    assert torch.equal(predict(model, x), target_out)
    assert not torch.equal(target_out, predict(allocated, x))


def fail_method(monkeypatch, method: str, exc: BaseException) -> None:
    """Make every benchmark transfer that includes ``method`` raise ``exc`` (through
    the protocol's ``select_many``), the others run as usual."""
    from pacsim.bench import protocol

    real = protocol.select_many

    def flaky(requests, *args, **kwargs):
        if any(r.method == method for r in requests):
            raise exc
        return real(requests, *args, **kwargs)

    monkeypatch.setattr(protocol, "select_many", flaky)


#: A small friedman recipe (pacsim datasets / suites): format with ``name`` and ``n``,
#: the target's sample count.
RECIPE = """name = "{name}"
simulator = "friedman"
seed = 0
[source]
setting = "source"
n = 20
[target]
setting = "target"
n = {n}
"""


def overflowing_checkpoint(ckpt, out):
    """A copy of checkpoint ``ckpt`` at ``out`` whose weights are all 3e38: loadable, but
    its predictions are not finite."""
    import torch

    from pacsim.data.stats import Normalizer
    from pacsim.io import load_checkpoint, save_checkpoint

    model, _, meta = load_checkpoint(ckpt)
    norm = Normalizer.from_dict(meta.pop("normalizer"))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(3e38)
    return save_checkpoint(out, model, meta=meta, normalizer=norm)
