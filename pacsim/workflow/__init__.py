"""The surrogate workflow on a user's own files: train, transfer, predict, evaluate.

The functions behind ``pacsim train``, ``pacsim transfer``, ``pacsim predict`` and
``pacsim evaluate``; each reads pacsim-h5 files and pacsim checkpoints and works in
physical units.
"""

from .inference import evaluate_file, predict_file
from .surrogate import train_surrogate, transfer_surrogate

__all__ = ["evaluate_file", "predict_file", "train_surrogate", "transfer_surrogate"]
