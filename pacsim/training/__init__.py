"""The training core shared by every trainer: :mod:`.config` (:class:`TrainConfig`, the
options of both trainers), :mod:`.core` (history, checks and the one masked optimiser
step), :mod:`.callbacks` (hooks into :func:`~pacsim.training.single.fit`'s epochs) and
:mod:`.single` (:func:`~pacsim.training.single.fit`, one model). The stacked trainer
``fit_many`` lives in :mod:`pacsim.many` and builds on them; :mod:`pacsim.train` is the
public surface of all of them."""

from .callbacks import Callback, ProgressBar, StopWhen
from .config import TrainConfig

__all__ = ["Callback", "ProgressBar", "StopWhen", "TrainConfig"]
