"""The surrogate workflow on a user's own files: train, transfer, predict, evaluate.

The functions behind ``pacsim train``, ``pacsim transfer``, ``pacsim predict`` and
``pacsim evaluate``; each reads pacsim-h5 files and pacsim checkpoints and works in
physical units. Training and transfer take their settings as :class:`TrainSettings` and
:class:`TransferSettings`.
"""

from .inference import evaluate_file, predict_file
from .settings import TrainSettings, TransferSettings
from .surrogate import train_surrogate, transfer_surrogate

__all__ = ["TrainSettings", "TransferSettings", "evaluate_file", "predict_file",
           "train_surrogate", "transfer_surrogate"]
