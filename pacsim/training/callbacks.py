"""Hooks into :func:`~pacsim.train.fit`'s epochs: a :class:`Callback` may follow training
(a progress bar, a log) or stop it (a target loss reached), without a flag in the
trainer for each.

A callback is any object with some of the methods of :class:`Callback`; ``fit`` calls
those it has, in the order the callbacks are given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..progress import progress_bar
from .core import History


class Callback(Protocol):
    """What :func:`~pacsim.train.fit` calls; every method is optional.

    ``on_train_begin(epochs)`` before the first epoch (``epochs``: at most that many
    run); ``on_epoch_end(history)`` after each epoch (validated and recorded), True to
    stop training there; ``on_train_end(history)`` when training ends, also on an error.
    """

    def on_epoch_end(self, history: History) -> bool | None: ...


class ProgressBar:
    """A tqdm bar over the epochs with the latest losses; ``enabled=None``: only on a
    terminal."""

    def __init__(self, enabled: bool | None = None, desc: str | None = None) -> None:
        self.enabled, self.desc = enabled, desc or "fit"
        self.bar: Any = None

    def on_train_begin(self, epochs: int) -> None:
        self.bar = progress_bar(self.enabled, epochs, self.desc, unit="epoch", leave=False)

    def on_epoch_end(self, history: History) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        post = {"loss": f"{history.train_loss[-1]:.4g}"}
        if history.val_loss:
            post["val"] = f"{history.val_loss[-1]:.4g}"
        self.bar.set_postfix(post)

    def on_train_end(self, history: History) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class StopWhen:
    """Stop training after the first epoch whose history ``predicate`` accepts (e.g. a
    target validation loss)."""

    def __init__(self, predicate: Callable[[History], bool]) -> None:
        self.predicate = predicate

    def on_epoch_end(self, history: History) -> bool:
        return bool(self.predicate(history))


def call(callbacks: list[Any], method: str, *args: Any) -> bool:
    """Call ``method`` on every callback that has it; True if any asked to stop."""
    stop = False
    for cb in callbacks:
        hook = getattr(cb, method, None)
        if hook is not None and hook(*args):
            stop = True
    return stop
