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
