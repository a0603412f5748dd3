"""Crash safety: SIGKILL a writer mid-stream, reopen, find every flushed tuple intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from nextstate.buffers import BufferSet, BufferSpec

# Shared by the writer subprocess and the test, so both build the very same tuples.
MAKE_TUPLE = textwrap.dedent('''
    from nextstate.extractors.types import Message, ScoredTuple

    def make(i):
        return ScoredTuple(
            interaction_id=f"s{i % 13}#{i}", session_id=f"s{i % 13}", extractor="tool_result",
            kind="evaluative" if i % 4 else "directive", source=("tool", "user")[i % 2],
            context=tuple(Message("user", f"turn {k} of {i} " * (1 + (i * 7 + k) % 60))
                          for k in range(1 + i % 5)),
            action=Message("assistant", f"action {i}"), reward=((i % 21) - 10) / 10,
            policy_version=f"v{i // 100}", behaviour_logprobs=tuple(-k / 7 for k in range(i % 40)))
''')

# Sessions that grow by two messages per tuple, reusing the message objects (as the daemon
# does), with an edited history now and then: the stored contexts are chains of segments.
MAKE_GROWING_TUPLE = textwrap.dedent('''
    from functools import lru_cache
    from nextstate.extractors.types import Message, ScoredTuple

    @lru_cache(maxsize=None)
    def message(session, k, edited):
        return Message(("user", "assistant")[k % 2],
                       f"session {session} message {k}{' edited' * edited} " * (1 + k % 9))

    def make(i):
        session, turn = i % 13, i // 13
        edited = turn % 7 == 3   # a branch: message 1 differs, later turns go back
        context = tuple(message(session, k, edited and k == 1) for k in range(2 * turn + 1))
        return ScoredTuple(
            interaction_id=f"s{session}#{i}", session_id=f"s{session}",
            extractor="tool_result", kind="evaluative" if i % 4 else "directive",
            source=("tool", "user")[i % 2], context=context,
            action=Message("assistant", f"action {i}"), reward=((i % 21) - 10) / 10)
''')

WRITER = textwrap.dedent('''
    import sys
    from pathlib import Path
    from nextstate.buffers import BufferSet, BufferSpec

    specs = [BufferSpec("evaluative", kinds=("evaluative",), capacity=100_000),
             BufferSpec("directive", kinds=("directive",), capacity=100_000)]
    bufs = BufferSet.open(Path(sys.argv[1]), specs)
    i = 0
    while i < 200_000:               # bounded: the test kills it long before
        bufs.extend([make(j) for j in range(i, i + 7)])
        i += 7
        if i % 70 == 0:
            bufs.flush()
            print(i, flush=True)     # only after flush returned: these are durable
''')

SPECS = [BufferSpec("evaluative", kinds=("evaluative",), capacity=100_000),
         BufferSpec("directive", kinds=("directive",), capacity=100_000)]


@pytest.mark.parametrize("make_tuple", [MAKE_TUPLE, MAKE_GROWING_TUPLE],
                         ids=["new_context_each", "growing_sessions"])
def test_sigkill_mid_stream_loses_no_flushed_tuple(tmp_path, make_tuple):
    """Every tuple reported flushed before SIGKILL is present and equal after reopening."""
    namespace: dict = {}
    exec(make_tuple, namespace)
    make = namespace["make"]
    flushed = 0
    with subprocess.Popen([sys.executable, "-c", make_tuple + WRITER, str(tmp_path)],
                          stdout=subprocess.PIPE, text=True, env={**os.environ}) as child:
        try:
            assert child.stdout is not None
            for line in child.stdout:
                flushed = int(line)
                if flushed >= 1400:   # 20 flushes: the writer is mid-stream now
                    child.send_signal(signal.SIGKILL)
                    break
        finally:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert flushed >= 1400

    with BufferSet.open(tmp_path, SPECS) as bufs:
        stored = [t for rb in bufs.buffers.values() for t in rb.iter_tuples()]
        by_id = {t.interaction_id: t for t in stored}
        assert len(by_id) == len(stored) >= flushed
        for i in range(flushed):
            assert by_id[f"s{i % 13}#{i}"] == make(i)
        # Whatever else made it (a later flush racing the kill) is whole too.
        for t in stored:
            assert t == make(int(t.interaction_id.split("#")[1]))
        assert bufs.extend(make(i) for i in range(flushed)) == 0
