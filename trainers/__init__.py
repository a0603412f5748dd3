"""Online trainers: learn a policy from scored tuples in replay buffers, publish versions.

Public API (used by the daemon, the CLI and the demo):

* :class:`Trainer` (``step``, ``maybe_publish``, ``restore_latest``, ``resume``,
  ``policy_version``, ``state_dict``/``load_state_dict``) and :class:`TrainerConfig`;
* policies: :class:`TinyPolicy` (built-in, CPU-fast) and :class:`HFPolicy` (transformers,
  optional LoRA); :func:`load_policy` hot-loads a published version;
* :func:`latest_checkpoint`, :func:`train_main` (``nextstate train``);
* :class:`Sampleable`: what the trainer needs of a replay buffer.
"""

from nextstate.trainers.checkpoint import latest_checkpoint, load_policy, read_manifest
from nextstate.trainers.cli import train_main
from nextstate.trainers.config import TrainerConfig
from nextstate.trainers.policy import CausalLMPolicy, Policy
from nextstate.trainers.sampling import ListBuffer, Sampleable
from nextstate.trainers.tiny import TinyConfig, TinyPolicy
from nextstate.trainers.trainer import Trainer


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # HFPolicy imports transformers/peft (seconds): only when asked for.
    if name == "HFPolicy":
        from nextstate.trainers.hf import HFPolicy

        return HFPolicy
    raise AttributeError(name)


__all__ = ["CausalLMPolicy", "HFPolicy", "ListBuffer", "Policy", "Sampleable", "TinyConfig",
           "TinyPolicy", "Trainer", "TrainerConfig", "latest_checkpoint", "load_policy",
           "read_manifest", "train_main"]
