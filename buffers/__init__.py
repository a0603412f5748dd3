"""Replay buffers for scored tuples: Storage + Sampler + Writer (TorchRL's split).

* **Storage** (``storage.py``): slots whose metadata (sequence, source, policy version,
  priority) sit in numpy arrays. :class:`MemoryStorage` keeps tuple objects (tests);
  :class:`SQLiteStorage` is the durable default, one SQLite WAL file per buffer; see the
  design note in ``sqlite_storage.py`` (atomic commits mean no torn tuple after kill -9,
  dedup keys indexed on disk, payloads fetched only for sampled rows).
* **Writer** (``writers.py``): bounded capacity, FIFO or lowest-priority eviction,
  per-source quotas.
* **Sampler** (``samplers.py``): uniform or prioritized (numpy k-ary sum tree,
  alpha/beta, importance weights), both staleness-aware (decay and max staleness, by
  policy version: the trailing integer of ``policy_version``; unknown = never stale).
* **Deduplication** on :attr:`ScoredTuple.key`, across restarts.
* :class:`BufferSet`: the named buffers of a deployment, each fed the kinds it lists.
* :class:`ShardedBuffer`: one buffer's shards (``nextstate run --workers``) sampled as one.

The daemon calls ``extend`` for every scored tuple, ``flush`` before committing Kafka
offsets, and trainers call ``sample``/``update_priorities``.

Example:
    >>> import tempfile, pathlib
    >>> from nextstate.buffers import BufferSet, BufferSpec
    >>> from nextstate.extractors.types import Message, ScoredTuple
    >>> specs = [BufferSpec("evaluative", kinds=("evaluative",), capacity=1000,
    ...                     sampler="prioritized", source_quotas={"tool": 0.5}, seed=0)]
    >>> state_dir = pathlib.Path(tempfile.mkdtemp())
    >>> tuples = [ScoredTuple(f"s#{i}", "s", "tool_result", "evaluative", "tool", (),
    ...                       Message("assistant", f"call {i}"), reward=(-1) ** i,
    ...                       policy_version=f"v{i}") for i in range(10)]
    >>> with BufferSet.open(state_dir, specs) as bufs:
    ...     bufs.extend(tuples + tuples[:3])     # re-delivered tuples are skipped
    ...     bufs.flush()                         # durable now: commit offsets after this
    10
    >>> with BufferSet.open(state_dir, specs) as bufs:   # reopen: everything is back
    ...     rb = bufs.buffers["evaluative"]
    ...     batch = rb.sample(4, current_version=9)
    ...     rb.update_priorities(batch.indices, [0.5, 0.1, 2.0, 0.0])
    ...     len(rb), bufs.extend(tuples), len(batch.tuples), batch.weights.shape
    (10, 0, 4, (4,))
"""

from nextstate.buffers.buffer_set import BufferSet
from nextstate.buffers.memory_storage import MemoryStorage
from nextstate.buffers.priorities import RewardBaselinePriority
from nextstate.buffers.replay_buffer import ReplayBuffer, SampleBatch
from nextstate.buffers.samplers import PrioritizedSampler, Sampler, UniformSampler
from nextstate.buffers.sharded import ShardedBuffer
from nextstate.buffers.spec import BufferSpec
from nextstate.buffers.sqlite_storage import SQLiteStorage
from nextstate.buffers.storage import Storage
from nextstate.buffers.versions import UNKNOWN_VERSION, parse_policy_version
from nextstate.buffers.writers import EvictingWriter, Writer

__all__ = [
    "UNKNOWN_VERSION",
    "BufferSet",
    "BufferSpec",
    "EvictingWriter",
    "MemoryStorage",
    "PrioritizedSampler",
    "ReplayBuffer",
    "RewardBaselinePriority",
    "SQLiteStorage",
    "SampleBatch",
    "Sampler",
    "ShardedBuffer",
    "Storage",
    "UniformSampler",
    "Writer",
    "parse_policy_version",
]
