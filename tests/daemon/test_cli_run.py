"""``nextstate run``'s argument errors: a clear message and exit 2, nothing left behind."""

from __future__ import annotations

from nextstate.daemon.cli import main as cli_main


def test_run_missing_input_file_is_a_clear_error(tmp_path, capsys):
    """A file source that does not exist exits 2 naming it, and creates no state dir."""
    state = tmp_path / "state"
    missing = tmp_path / "nope.jsonl"
    assert cli_main(["run", "--source", f"file:{missing}", "--state-dir", str(state),
                     "--metrics-port", "-1", "--log-format", "json"]) == 2
    assert f"no input file {str(missing)!r}" in capsys.readouterr().err
    assert not state.exists()
    # and stats on that dir says no daemon ran there, instead of printing zeros
    assert cli_main(["stats", "--state-dir", str(state)]) == 2


def test_run_with_its_metrics_port_taken_is_a_clear_error(tmp_path, capfd):
    """A second daemon on one host with the default port: a traceback and exit 1 before; now
    ``metrics_unavailable`` naming the port, exit 2, and the store closed."""
    import json
    import socket

    from nextstate.buffers import BufferSet

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    source = tmp_path / "in.jsonl"
    source.write_text("")
    try:
        assert cli_main(["run", "--source", f"file:{source}", "--state-dir",
                         str(tmp_path / "state"), "--metrics-port", str(port),
                         "--log-format", "json"]) == 2
    finally:
        taken.close()
    out = capfd.readouterr()
    (error,) = [json.loads(x) for x in (out.out + out.err).splitlines()
                if '"metrics_unavailable"' in x]
    assert error["port"] == port and "0 picks a free one" in error["hint"]
    BufferSet.open(tmp_path / "state" / "buffers", []).close()  # not left locked or broken


def test_stats_into_a_closed_pipe_stops_quietly(tmp_path):
    """``nextstate stats | head``: a reader gone before the output ends was a BrokenPipeError
    traceback and exit 1; now no output on stderr and exit 141, as a tool killed by SIGPIPE."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import nextstate.daemon

    sample = Path(nextstate.daemon.__file__).parent / "sample_interactions.jsonl"
    state = tmp_path / "state"
    assert cli_main(["run", "--source", f"file:{sample}", "--state-dir", str(state),
                     "--metrics-port", "-1", "--log-format", "json"]) == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before stats starts: its first write finds no reader
    try:
        done = subprocess.run([sys.executable, "-m", "nextstate.daemon.cli", "stats",
                               "--state-dir", str(state)],
                              stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert done.stderr.decode() == ""
    assert done.returncode == 141
