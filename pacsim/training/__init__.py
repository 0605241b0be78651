"""The training core shared by every trainer: :mod:`.core` (history, checks and the one
masked optimiser step) and :mod:`.single` (:func:`~pacsim.training.single.fit`, one
model). The stacked trainer ``fit_many`` lives in :mod:`pacsim.many` and builds on both;
:mod:`pacsim.train` is the public surface of all three."""
