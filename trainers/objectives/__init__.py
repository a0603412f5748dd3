"""Training objectives, one small module each, as pure tensor functions.

Each returns a *per-sequence* loss so the trainer can weight tuples (importance, staleness,
confidence) and average over the whole batch across micro-batches.
"""

from nextstate.trainers.objectives.dpo import dpo_loss
from nextstate.trainers.objectives.kl import kl_penalty
from nextstate.trainers.objectives.opd import opd_loss
from nextstate.trainers.objectives.pg import RunningBaseline, clipped_surrogate, pg_loss

__all__ = ["RunningBaseline", "clipped_surrogate", "dpo_loss", "kl_penalty", "opd_loss",
           "pg_loss"]
