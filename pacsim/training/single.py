"""One model: :func:`fit`, the trainer behind source training, PAC allocate and
calibrate, every transfer baseline and the benchmarks (public as :func:`pacsim.train.fit`).

Masking, determinism, device handling and early stopping are written once here. Every
optimiser step goes through :class:`~pacsim.training.core.MaskedStep` (frozen entries of
``update_mask`` are restored to their exact bits after it; L2 penalties are added as
gradients). With ``compile`` only the model's forward (and its backward) runs through
``torch.compile``; the masked step stays eager, so it keeps its exactness.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from ..data.batches import Batches, Data, batches
from ..device import resolve_device
from ..distributed import all_sum, world
from ..exact import L2Penalty, L2Pull, MaskSpec, UpdateMask
from .callbacks import ProgressBar, StopWhen, call
from .config import TrainConfig, resolve_config
from .core import (
    History,
    MaskedStep,
    TrainingDiverged,
    check_float32,
    check_output_shape,
    make_loss,
    make_optimizer,
    schedule_horizon,
)

#: Compiled graphs one model class may collect before ``fit(compile=...)`` runs it eagerly.
RECOMPILE_LIMIT = 64


def _bn_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[torch.Generator | None]:
    """Seed stochastic layers without touching the caller's global RNG state."""
    if seed is None:
        yield torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        return
    # torch.manual_seed reseeds every GPU: save and restore them all
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)



def compile_options(compile: bool | str | Mapping[str, Any], device: torch.device
                    ) -> dict[str, Any] | None:
    """The ``torch.compile`` keyword arguments of :func:`fit`'s ``compile`` option, or
    None for eager training; ValueError, in one line, for a value torch would refuse.

    ``True``: mode ``"reduce-overhead"`` (CUDA graphs) on CUDA, the default mode
    elsewhere; a string: that mode; a mapping: ``torch.compile``'s keyword arguments.
    Unless the mapping says otherwise, ``dynamic=False`` (the full batches and the
    smaller last batch of an epoch get one static graph each: two compiles, no dynamic
    shapes, which CUDA graphs could not use anyway) and, where torch has it,
    ``recompile_limit=RECOMPILE_LIMIT``: graphs are cached per model class and reused by
    later fits with the same shapes and trainable tensors, and torch's default of 8
    graphs per class would send the ninth distinct setting (width, batch size, update
    mask) back to eager without an error."""
    if compile is False:
        return None
    if compile is True:
        opts: dict[str, Any] = {"mode": "reduce-overhead"} if device.type == "cuda" else {}
    elif isinstance(compile, str):
        opts = {"mode": compile}
    elif isinstance(compile, Mapping):
        opts = dict(compile)
    else:
        raise ValueError(f"compile must be a bool, a torch.compile mode or a mapping of "
                         f"torch.compile arguments, got {compile!r}")
    allowed = [n for n in inspect.signature(torch.compile).parameters if n != "model"]
    unknown = sorted(str(k) for k in opts if k not in allowed)
    if unknown:
        raise ValueError(f"compile names unknown torch.compile arguments {unknown}; "
                         f"choose from {allowed}")
    mode = opts.get("mode")
    if mode is not None:
        from torch._inductor import list_mode_options

        modes = sorted(list_mode_options())
        if not isinstance(mode, str) or mode not in modes:
            raise ValueError(f"unknown torch.compile mode {mode!r}; choose one of {modes}")
        if opts.get("options") is not None:
            raise ValueError("compile: give torch.compile a mode or options, not both")
    backend = opts.get("backend")
    if backend is not None and not callable(backend):
        backends = torch.compiler.list_backends(exclude_tags=())
        if backend not in backends:
            raise ValueError(f"unknown torch.compile backend {backend!r}; choose one of "
                             f"{backends}")
    for name in ("dynamic", "fullgraph"):
        if opts.get(name) is not None and not isinstance(opts[name], bool):
            raise ValueError(f"compile[{name!r}] must be a bool, got {opts[name]!r}")
    opts.setdefault("dynamic", False)
    if "recompile_limit" in allowed:
        opts.setdefault("recompile_limit", RECOMPILE_LIMIT)
    return opts


# ----------------------------------------------------------------------------- fit

#: The keywords of :func:`fit` that build callbacks rather than set a TrainConfig field.
CALLBACK_KEYWORDS = ("progress", "desc", "stop_when")


def _callbacks(given: Sequence[Any] | None, hooks: dict[str, Any]) -> list[Any]:
    """The callbacks of one :func:`fit`: ``given`` (None: a progress bar on a terminal),
    the progress bar ``progress``/``desc`` ask for instead, then ``stop_when``."""
    out = [ProgressBar()] if given is None else list(given)
    if "progress" in hooks or "desc" in hooks:
        bar = ProgressBar(hooks.get("progress"), hooks.get("desc"))
        out = [bar, *out[1:]] if given is None else [*out, bar]
    if hooks.get("stop_when") is not None:
        out.append(StopWhen(hooks["stop_when"]))
    return out


def fit(
    model: nn.Module,
    train: Data,
    config: TrainConfig | None = None,
    *,
    val: Data | None = None,
    update_mask: MaskSpec | None = None,
    penalty: L2Penalty | None = None,
    seed: int | None = None,
    callbacks: Sequence[Any] | None = None,
    **overrides: Any,
) -> History:
    """Train ``model`` in place on ``train`` and return its :class:`History`.

    ``config`` (a :class:`~pacsim.training.config.TrainConfig`, default ``TrainConfig()``)
    holds the training options; keyword ``overrides`` replace its fields by name
    (``fit(model, data, lr=1e-2, steps=500)``, or ``fit(model, data, config, lr=1e-2)``;
    a budget given alone replaces the config's). An unknown keyword is a TypeError.

    ``train``/``val``: ``(X, Y)`` tensors or arrays, a Dataset of ``(x, y)``, or a DataLoader.
    ``update_mask``: parameter name -> bool (whole tensor) or bool tensor (per entry) of
    what may change; parameters it does not name are frozen. ``None`` trains everything
    that has ``requires_grad``. Frozen entries keep their exact values.
    ``loss``: ``"mse"``, ``"l1"``, ``"huber"`` or a callable ``(pred, target) -> scalar``.
    ``penalty`` adds an L2 pull (see :class:`L2Penalty`) at almost no cost. With ``val``, the epoch
    with the lowest validation loss is selected (``restore_best``) and ``patience``
    stops after that many epochs without improvement. ``lr_schedule="cosine"`` anneals
    the learning rate to zero over the budget, or over ``schedule_steps`` (>= the budget:
    training stops part-way along that path, as a cross-validation fold that ran longer
    saw it). ``amp`` enables bf16 autocast on CUDA (ignored on CPU).
    ``freeze_bn_stats`` keeps BatchNorm running statistics fixed while training.
    The budget is ``epochs`` passes or exactly ``steps`` optimiser steps (the last pass
    may stop part-way); give one of them.
    A loss that is not finite ends training with a ValueError naming the epoch and its
    steps (checked once an epoch, no host sync per step); the model is left at its best
    epoch, else as it was when that epoch began (``on_divergence="keep"``: the history is
    returned instead). With a built-in loss, model outputs and targets must have the same
    shape.

    ``callbacks`` (see :mod:`pacsim.training.callbacks`) are told when training begins,
    after every epoch (a callback returning True from ``on_epoch_end`` ends training
    there, e.g. at a target validation loss) and when it ends. ``None``: a progress bar
    on a terminal. Three keywords build callbacks: ``progress`` (True, False or None: on a
    terminal) and ``desc`` set the progress bar (added to ``callbacks``),
    ``stop_when(history) -> bool`` ends training when it returns True.

    ``compile`` runs the training forward (and so its backward) through
    ``torch.compile``, see :func:`compile_options`: ``True`` (CUDA graphs on CUDA), a
    mode, or ``torch.compile``'s keyword arguments, e.g. ``{"backend": "aot_eager"}``.
    The update-mask restore, the L2 pull and the optimiser step stay eager, so frozen
    entries stay bit-exact; the model trained and returned is ``model`` itself (its
    ``state_dict`` keys are unchanged). Validation runs the eager model. A compiled run
    leaves no gradients in ``.grad`` (CUDA graphs may own their memory).

    ``channels_last`` trains the 2D convolution weights in the channels-last memory
    layout, and puts them back in the default layout afterwards (same values; the
    convolutions round differently). ``None`` (default): on the CPU, for models with 2D
    convolutions, where it was measured 1.1-1.8x faster (``benchmarks/README.md``),
    not under data parallelism.

    Inside a process group of several ranks (``torchrun``, see :mod:`pacsim.distributed`)
    the model trains as :class:`~torch.nn.parallel.DistributedDataParallel`: every rank
    draws the same global batches (``seed`` is required) and computes only its share, and
    losses are averaged over the ranks, so the run follows the one-process run with the
    same ``batch_size``.
    """
    hooks = {k: overrides.pop(k) for k in CALLBACK_KEYWORDS if k in overrides}
    cfg = resolve_config(config, overrides, "fit", also=CALLBACK_KEYWORDS)
    cbs = _callbacks(callbacks, hooks)
    cfg.check_budget()
    if isinstance(cfg.lr, tuple) or isinstance(cfg.steps, tuple):
        raise ValueError("fit trains one model: lr and steps take one value (one per model "
                         "is fit_many's)")
    epochs, steps = cfg.epochs, cast("int | None", cfg.steps)
    loss, batch_size = cfg.loss, cfg.batch_size
    check_float32(model)
    dev = resolve_device(cfg.device)
    compile_opts = compile_options(cfg.compile, dev)
    loss_fn = make_loss(loss)
    shard = world()
    if shard is not None and seed is None:
        raise ValueError("data-parallel training needs seed=: every rank must draw the "
                         "same batches")
    model.to(dev)
    train_b = batches(train, batch_size, dev, name="train", shard=shard)
    if len(train_b) == 0:
        raise ValueError("the train data yields no batches (an empty dataset or DataLoader)")
    val_b = (batches(val, batch_size, dev, shuffle=False, name="val", shard=shard)
             if val is not None else None)

    mask = UpdateMask(model, update_mask, dev)
    trainable = mask.trainable
    pull = L2Pull.build(model, penalty, trainable, dev)
    history = History()
    if epochs == 0 or steps == 0:
        return history
    if not trainable:
        raise ValueError("nothing to train: update_mask freezes every parameter")
    opt = make_optimizer(cfg.optimizer, trainable, cast(float, cfg.lr), cfg.weight_decay)
    step = MaskedStep(mask, pull, opt, cfg.clip_grad)
    if steps is not None:
        epochs = -(-steps // len(train_b))
        total_steps = steps
    else:
        assert epochs is not None
        total_steps = epochs * len(train_b)
    horizon = schedule_horizon(cfg.schedule_steps, total_steps)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=horizon)
             if cfg.lr_schedule == "cosine" else None)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if cfg.amp and dev.type == "cuda" else contextlib.nullcontext())
    bn = _bn_modules(model) if cfg.freeze_bn_stats else []
    best = _BestEpoch(model, cfg.restore_best, cfg.patience)
    keep_diverged = cfg.on_divergence == "keep"
    t0 = time.perf_counter()
    was_training = model.training
    relaid: list[tuple[nn.Parameter, torch.Tensor]] = []
    try:
        call(cbs, "on_train_begin", epochs)
        _channels_last(model, cfg.channels_last, dev, shard is not None, relaid)
        with mask.frozen_tensors(), _seeded(seed, dev) as gen:
            # Compiled after the frozen tensors lose requires_grad (the graphs are traced
            # with it). The wrapper shares ``model``'s parameters and leaves ``model``
            # itself as it was. Under DDP the inner module is compiled, as torch's "where
            # to apply torch.compile" notes advise: DDP runs it inside its forward, where
            # dynamo still splits the graph at DDP's buckets to overlap communication.
            net: nn.Module = (model if compile_opts is None
                              else torch.compile(model, **compile_opts))  # type: ignore[assignment]
            if shard is not None:
                net = nn.parallel.DistributedDataParallel(
                    net, device_ids=[dev.index] if dev.type == "cuda" else None)
            # CUDA graphs (mode "reduce-overhead") reuse their output memory at every
            # replay: each step is marked as a new one. The loss is computed eagerly from
            # the output before the next step, so it (and the running loss) is never
            # graph memory; the mark costs nothing without CUDA graphs.
            mark_step = compile_opts is not None and dev.type == "cuda"
            for epoch in range(epochs):
                # one snapshot an epoch: where a diverged epoch leaves the model
                epoch_start = {k: v.detach().clone() for k, v in model.state_dict().items()}
                first_step = history.steps + 1
                model.train()
                for m in bn:
                    m.eval()
                running = torch.zeros((), device=dev)
                count = 0
                for x, y in train_b.epoch(gen):
                    if mark_step:
                        torch.compiler.cudagraph_mark_step_begin()
                    with autocast:
                        pred = net(x)
                        if history.steps == 0 and isinstance(loss, str):
                            check_output_shape(pred, y)
                        if x.shape[0]:
                            batch_loss = loss_fn(pred.float(), y)
                        else:  # a rank with no share of a tiny batch still joins the sync
                            batch_loss = pred.float().sum() * 0.0
                    step.zero_grad()
                    if shard is None:
                        batch_loss.backward()
                    else:
                        (batch_loss * train_b.share).backward()
                    step()  # pull, clip, optimiser, frozen entries back to their bits
                    if sched is not None:
                        sched.step()
                    running += batch_loss.detach() * x.shape[0]
                    count += x.shape[0]
                    history.steps += 1
                    if history.steps == total_steps:
                        break
                if shard is not None:
                    running, total = all_sum(running, torch.tensor(float(count), device=dev))
                    count = int(total)
                history.train_loss.append(float(running) / count)
                if not math.isfinite(history.train_loss[-1]):
                    failure = best.diverged(epoch_start, history,
                                            f"the loss is not finite in epoch {epoch + 1} "
                                            f"(steps {first_step}-{history.steps})")
                    if keep_diverged:
                        break
                    raise failure
                history.epochs_run = epoch + 1
                if val_b is not None:
                    # the eager model: eval mode under no_grad would be further graphs
                    # (and CUDA graph memory) for one pass an epoch
                    v = batched_mean_loss(model, val_b, loss_fn, autocast, isinstance(loss, str))
                    improved = history.record_val(epoch, history.steps, v)
                    if not math.isfinite(v):  # the epoch's last steps broke the weights
                        failure = best.diverged(epoch_start, history,
                                                f"the validation loss is not finite after "
                                                f"epoch {epoch + 1}")
                        if keep_diverged:
                            break
                        raise failure
                    best.update(improved)
                else:
                    history.best_epoch = epoch
                asked = call(cbs, "on_epoch_end", history)
                if best.out_of_patience() or asked:
                    history.stopped_early = epoch + 1 < epochs
                    break
        best.restore()
    finally:
        model.train(was_training)
        for param, original in relaid:  # the trained values, in the original tensor
            param.data = original.copy_(param.data)
        if compile_opts is not None:  # no gradient in memory a CUDA graph may reuse
            for p in trainable:
                p.grad = None
        call(cbs, "on_train_end", history)
    history.seconds = time.perf_counter() - t0
    return history


def _channels_last(model: nn.Module, wanted: bool | None, dev: torch.device,
                   distributed: bool, relaid: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    """Put ``model``'s 2D convolution weights in the channels-last layout if ``wanted``
    (None: on the CPU, one process), appending ``(parameter, its original tensor)`` to
    ``relaid`` for each one changed (``fit`` copies the trained values back into the
    original tensors). Only those weights change: the Parameter objects stay the same, so
    optimiser and masks keep them, and no other tensor's layout is touched."""
    if wanted is False or (wanted is None and (dev.type != "cpu" or distributed)):
        return
    weights = {id(m.weight): m.weight for m in model.modules()  # tied weights once
               if isinstance(m, nn.Conv2d) and isinstance(m.weight, nn.Parameter)}
    for w in weights.values():
        if not w.is_contiguous(memory_format=torch.channels_last):
            original = w.data
            w.data = original.contiguous(memory_format=torch.channels_last)
            relaid.append((w, original))


class _BestEpoch:
    """The epoch ``fit`` keeps: with validation, the best one (``restore_best``) and the
    ``patience`` count since it; on divergence, the best epoch or the epoch's start."""

    def __init__(self, model: nn.Module, restore_best: bool, patience: int | None) -> None:
        self.model, self.restore_best, self.patience = model, restore_best, patience
        self.state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def update(self, improved: bool) -> None:
        """After a validated epoch: keep it if ``improved``, else count it."""
        if improved:
            self.bad_epochs = 0
            if self.restore_best:
                self.state = copy.deepcopy(self.model.state_dict())
        else:
            self.bad_epochs += 1

    def out_of_patience(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def restore(self) -> None:
        """Load the kept epoch, if any."""
        if self.state is not None:
            self.model.load_state_dict(self.state)

    def diverged(self, epoch_start: dict[str, Any], history: History, what: str
                 ) -> TrainingDiverged:
        """Put the model back at its best epoch (or the epoch's start) and say why it
        stopped."""
        left = "its best epoch" if self.state is not None else "that epoch's start"
        self.model.load_state_dict(self.state if self.state is not None else epoch_start)
        return TrainingDiverged.because(what, f"the model is left at {left}", history)


@torch.no_grad()
def batched_mean_loss(model: nn.Module, data: Batches, loss_fn: Callable[..., torch.Tensor],
               autocast: Any, same_shapes: bool = True) -> float:
    """Mean loss over ``data``; ``same_shapes``: outputs and targets must match (the
    built-in losses), as in training."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=data.device)
    count = 0
    for x, y in data.epoch(None):
        with autocast:
            pred = model(x)
        if same_shapes:
            check_output_shape(pred, y, "the validation targets")
        if x.shape[0]:
            total += loss_fn(pred.float(), y).double() * x.shape[0]
            count += x.shape[0]
    if data.shard is not None:
        total, n = all_sum(total, torch.tensor(float(count), dtype=torch.float64,
                                               device=data.device))
        count = int(n)
    return float(total) / count


