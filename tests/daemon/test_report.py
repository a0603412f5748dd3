"""Tests of ``nextstate report`` over a recorded YieldStats series."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from nextstate.daemon.report import (
    METRIC_DEFINITIONS,
    Counters,
    fmt,
    load_prices,
    parse_since,
    report_main,
)
from nextstate.daemon.timeseries import TimeSeriesRecorder, default_path
from nextstate.daemon.yieldstats import YieldStats
from nextstate.extractors.tool import ToolResultExtractor
from nextstate.extractors.types import Interaction, Message, ToolCall, Usage, tuple_from

PRICES = """
[models."agent-small"]
input = 2.0
cached_input = 0.5
output = 8.0
"""


def _interaction(i: int, result: str, model: str = "agent-small") -> Interaction:
    call = ToolCall(id=f"c{i}", name="get_weather", arguments='{"city": "Oslo"}')
    return Interaction(
        interaction_id=f"s{i // 2}#{i}", session_id=f"s{i // 2}",
        context=(Message(role="user", content=f"weather {i}?"),),
        action=Message(role="assistant", tool_calls=(call,)),
        next_state=(Message(role="tool", content=result, tool_call_id=f"c{i}"),),
        model=model, usage=Usage(prompt_tokens=1000 + i, completion_tokens=50, cached_tokens=400),
        ts=1000.0 + i, shape="openai_exchange")


def _recorded_series(state_dir: Path, n: int = 12) -> YieldStats:
    """Feed YieldStats real interactions and extractor output, recording after each step."""
    stats = YieldStats(clock=lambda: 0.0)
    extract = ToolResultExtractor()
    with TimeSeriesRecorder(default_path(state_dir)) as recorder:
        for i in range(n):
            interaction = _interaction(i, "Error: missing required argument 'unit'" if i % 3 == 0
                                       else '{"temp_c": 4}')
            tuples = list(extract(interaction))
            if i % 4 == 0:
                tuples.append(tuple_from(interaction, extractor="user", kind="directive",
                                         source="user", hint="use celsius", confidence=0.8))
            stats.observe_record("openai_exchange")
            stats.observe_interaction(interaction, tuples)
            if i % 5 == 4:
                stats.observe_dead_letter("bad_json")
            if i % 2 == 1:
                stats.observe_session_end(1.0 if i % 4 == 1 else -1.0)
            recorder.record(1000.0 + 10 * i, stats.snapshot())
    return stats


def _summary_of(page: Path) -> dict:
    text = page.read_text()
    payload = re.search(r"<script type='application/json' id='summary'>(.*?)</script>", text, re.S)
    assert payload is not None
    return json.loads(payload.group(1).replace("<\\/", "</"), parse_constant=float)


@pytest.fixture
def report_dir(tmp_path: Path) -> tuple[Path, Path, YieldStats]:
    state = tmp_path / "state"
    stats = _recorded_series(state)
    (tmp_path / "prices.toml").write_text(PRICES)
    out = tmp_path / "out"
    rc = report_main(["--state-dir", str(state), "--out", str(out),
                      "--prices", str(tmp_path / "prices.toml")])
    assert rc == 0
    return out, state, stats


def test_report_files_and_numbers_match_the_counters(report_dir):
    """Every plot is written and the page's numbers equal ratios computed from YieldStats."""
    out, _, stats = report_dir
    for name in METRIC_DEFINITIONS:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = out / "report.html"
    summary = _summary_of(page)
    n = stats.total("interactions")
    assert n == 12
    sources = summary["sources"]
    assert sources["all"]["signal_per_interaction"] == pytest.approx(stats.total("tuples") / n)
    assert sources["user"]["tuples"] == stats.total("tuples", source="user") == 3
    # 12 evaluative tool tuples, plus a directive hint from each of the 4 errors.
    assert sources["tool"]["tuples"] == stats.total("tuples", source="tool") == 16
    assert sources["user"]["directive_share"] == 1.0
    tokens = stats.total("prompt_tokens") + stats.total("completion_tokens")
    assert sources["all"]["tuples_per_1k_tokens"] == pytest.approx(
        1000 * stats.total("tuples") / tokens)
    prompt, cached = stats.total("prompt_tokens"), stats.total("cached_tokens")
    cost = ((prompt - cached) * 2.0 + cached * 0.5 + stats.total("completion_tokens") * 8.0) / 1e6
    dep = summary["deployment"]
    assert dep["cost_usd"] == pytest.approx(cost)
    assert dep["sessions_ended"] == 6 and dep["sessions_succeeded"] == 3
    assert dep["cost_per_completed_session"] == pytest.approx(cost / 6)
    assert dep["cost_per_successful_session"] == pytest.approx(cost / 3)
    assert dep["success_per_1m_tokens"] == pytest.approx(3e6 / tokens)
    assert summary["window"]["cache_read_share"] == pytest.approx(cached / prompt)
    assert summary["window"]["dead_letter_rate"] == pytest.approx(2 / 14)
    assert summary["flags"]["error"] == pytest.approx(4 / 12)
    text = page.read_text()
    # The visible tables print the same numbers.
    assert f"<td>{fmt(cost / 3)}</td>" in text
    assert f"<td>{fmt(stats.total('tuples') / n)}</td>" in text
    for title, definition in METRIC_DEFINITIONS.values():
        assert html.escape(title) in text and html.escape(definition) in text
    assert "src='data:image/png;base64," in text and "src='http" not in text


def test_since_window_counts_only_its_increase(tmp_path):
    """``--since`` starts the window at its first sample: earlier counts are left out."""
    state = tmp_path / "state"
    _recorded_series(state)
    out = tmp_path / "out"
    # now - 90 s = 1070: samples at 1070..1110 (interactions 8 to 12).
    assert report_main(["--state-dir", str(state), "--out", str(out), "--since", "90s"],
                       now=lambda: 1160.0) == 0
    summary = _summary_of(out / "report.html")
    assert summary["window"]["interactions"] == 4  # increase from the 1070 sample to 1110
    assert summary["window"]["start"] == 1070.0
    assert math.isnan(summary["deployment"]["cost_usd"])  # no price table given


def test_counter_reset_is_an_increase_not_a_drop():
    """A counter that restarts from zero adds its new value, as Prometheus' increase does."""
    counters = Counters([(1.0, {"tuples_total": 5.0}), (2.0, {"tuples_total": 8.0}),
                         (3.0, {"tuples_total": 2.0}), (4.0, {"tuples_total": 4.0})],
                        from_zero=True)
    assert counters.total("tuples") == 8 + 2 + 2
    assert list(counters.increase("tuples")) == [0, 5, 8, 10, 12]


def test_merged_counters_sum_each_shards_increase_at_every_sample_time():
    """Shards sampled at their own times: each one's increase holds until its next sample,
    a reset in one shard is still an increase, gauges stay out, and the sum starts at 0."""
    a = Counters([(10.0, {"tuples_total": 2.0, "signal_per_interaction": 9.0}),
                  (30.0, {"tuples_total": 5.0}),
                  (40.0, {"tuples_total": 1.0})],  # restarted without state
                 from_zero=True)
    b = Counters([(20.0, {"tuples_total": 4.0, 'records_total{shape="x"}': 3.0}),
                  (50.0, {"tuples_total": 7.0, 'records_total{shape="x"}': 3.0})],
                 from_zero=True)
    merged = Counters.merge([a, b])
    assert merged.ts.tolist() == [10.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert merged.increase("tuples").tolist() == [0, 2, 6, 9, 10, 13]
    assert merged.increase("records", shape="x").tolist() == [0, 0, 3, 3, 3, 3]
    assert merged.label_values("records", "shape") == ["x"]
    assert merged.increase("signal_per_interaction").tolist() == [0] * 6
    # A --since window counts from each shard's first sample in it: no zero is put first.
    window = Counters.merge([Counters([(10.0, {"tuples_total": 100.0}),
                                       (30.0, {"tuples_total": 105.0})], from_zero=False),
                             Counters([(20.0, {"tuples_total": 50.0}),
                                       (40.0, {"tuples_total": 53.0})], from_zero=False)])
    assert window.ts.tolist() == [10.0, 20.0, 30.0, 40.0]
    assert window.increase("tuples").tolist() == [0, 0, 5, 8]
    assert len(Counters.merge([Counters([], from_zero=True)])) == 0


def test_parse_since_and_prices(tmp_path):
    """Relative and ISO ``--since`` values and the price table parse; bad input is rejected."""
    assert parse_since("1h", now=10_000.0) == 6400.0
    assert parse_since("90", now=100.0) == 10.0
    assert parse_since("1970-01-01T00:01:00") == 60.0
    assert parse_since("1970-01-01T01:01:00+01:00") == 60.0
    with pytest.raises(ValueError):
        parse_since("yesterday")
    path = tmp_path / "p.toml"
    path.write_text('[models."m"]\ninput = 1.0\noutput = 3\n')
    assert load_prices(path) == {"m": {"input": 1.0, "output": 3.0, "cached_input": 1.0}}
    path.write_text('[models."m"]\ninput = 1.0\n')
    with pytest.raises(ValueError):
        load_prices(path)


def test_missing_state_is_a_clear_error(tmp_path, capsys):
    """A state dir with no time series exits 2 with a message, writing nothing."""
    assert report_main(["--state-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no time series" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_empty_series_still_renders(tmp_path):
    """A series with a single sample writes every plot (marked as having no data)."""
    with TimeSeriesRecorder(default_path(tmp_path)) as recorder:
        recorder.record(5.0, YieldStats().snapshot())
    assert report_main(["--state-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    assert len(list((tmp_path / "o").glob("*.png"))) == len(METRIC_DEFINITIONS)


def _png_is_not_blank(path: Path) -> bool:
    """True when a PNG's decoded pixels are not all one value (pure zlib, no Pillow)."""
    data = path.read_bytes()
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width = struct.unpack(">I", chunk[:4])[0]
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    # Filter bytes start each row; distinct byte values beyond a handful mean real content.
    return width > 0 and len(set(raw[: 4 * width * 200])) > 16


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (apt-get install chromium)")
def test_page_renders_in_headless_chromium(report_dir, tmp_path):
    """Headless Chromium renders report.html to a screenshot that is not blank."""
    out, _, _ = report_dir
    shot = tmp_path / "shot.png"
    subprocess.run(
        [shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1280,2400", (out / "report.html").resolve().as_uri()],
        check=True, capture_output=True, timeout=120)
    assert shot.exists()
    assert _png_is_not_blank(shot)
