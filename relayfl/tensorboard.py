"""TensorBoard scalars of every evaluation (``relayfl simulate --tensorboard DIR``).

Written with PyTorch's own :class:`torch.utils.tensorboard.SummaryWriter`; the
``tensorboard`` package is the optional extra ``relayfl[tensorboard]`` (included in
``relayfl[dev]``). View with ``tensorboard --logdir DIR``.
"""

from __future__ import annotations

from pathlib import Path

from relayfl.errors import ConfigError
from relayfl.results import EvalRecord

__all__ = ["SCALARS", "TensorBoardWriter"]

#: Tag -> EvalRecord attribute written at every evaluation (x axis: the step).
SCALARS: dict[str, str] = {
    "accuracy/mean": "mean_accuracy",
    "accuracy/worst": "worst_accuracy",
    "accuracy/best": "best_accuracy",
    "loss/test_mean": "mean_loss",
    "loss/test_worst": "worst_loss",
    "loss/train": "train_loss",
    "consensus_distance": "consensus_distance",
    "lr": "lr",
    "epoch": "epoch",
    "round": "round",
    "bytes/sent_per_worker": "mean_bytes_sent",
}


class TensorBoardWriter:
    """Every evaluation as TensorBoard scalars (:data:`SCALARS`), x axis the step.

    Parameters
    ----------
    log_dir : str or Path
        Folder of the event files (created).

    Raises
    ------
    ConfigError
        The ``tensorboard`` package is not installed (one line naming the extra).
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package; install it with "
                "pip install 'relayfl[tensorboard]' (or pip install tensorboard)"
            ) from None
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def add_evaluation(self, record: EvalRecord) -> None:
        """Write one evaluation's scalars at ``record.step``."""
        for tag, attr in SCALARS.items():
            self._writer.add_scalar(tag, float(getattr(record, attr)), record.step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
