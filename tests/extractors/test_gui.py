"""Tests for the GUI state-diff extractor."""

from __future__ import annotations

import json

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextstate.extractors.gui import (
    GuiDiffExtractor,
    diff_trees,
    parse_action,
    parse_observation,
    read_gui_change,
)
from nextstate.extractors.types import tuple_from
from tests.extractors.conftest import browser_obs

TREE = "RootWebArea 'Shop'\n\t[10] button 'Add to cart'\n\t[11] textbox 'Search'\n" \
       "\tStaticText 'Updated 12:01'"


def test_parse_observation_json_and_raw() -> None:
    """JSON observations are split into fields; raw text is taken as the tree."""
    obs = parse_observation(browser_obs(TREE, error="TimeoutError: x"))
    assert (obs.url, obs.title, obs.error) == ("http://shop.test/", "Shop", "TimeoutError: x")
    assert parse_observation(TREE).tree == TREE


def test_parse_action_forms() -> None:
    """BrowserGym action strings and action-named tools both parse."""
    assert parse_action("browser", json.dumps({"action": "fill('11', 'mouse')"})) == \
        ("fill", "11", "mouse")
    assert parse_action("click", json.dumps({"bid": "10"})) == ("click", "10", None)


def test_diff_drops_noise_pairs() -> None:
    """A clock that ticks or focus that moves is not a change."""
    after = TREE.replace("12:01", "12:02").replace("'Search'", "'Search', focused")
    assert diff_trees(TREE, after) == ([], [])
    added, removed = diff_trees(TREE, TREE + "\n\t[12] alert 'Item added'")
    assert added == ["\t[12] alert 'Item added'"] and removed == []


def test_no_op_is_negative_with_hint(gui_step) -> None:
    """A click that changes nothing is a no-op: negative, with a directive hint."""
    tuples = GuiDiffExtractor()(gui_step("click('10')", browser_obs(TREE), browser_obs(TREE)))
    assert [t.kind for t in tuples] == ["evaluative", "directive"]
    assert tuples[0].reward < 0 and "changed nothing" in (tuples[1].hint or "")


def test_passive_action_without_change_gives_nothing(gui_step) -> None:
    """Scrolling or a noop is not expected to change the tree."""
    assert GuiDiffExtractor()(gui_step("scroll(0, 200)", browser_obs(TREE),
                                       browser_obs(TREE))) == []


def test_action_error_is_negative(gui_step) -> None:
    """The observation's error field marks the action as failed."""
    after = browser_obs(TREE, error="ValueError: Could not find element with bid '99'")
    (evaluative, directive) = GuiDiffExtractor()(gui_step("click('99')", browser_obs(TREE),
                                                          after))
    assert evaluative.reward <= -0.8 and "Could not find element" in (directive.hint or "")


def test_error_alert_is_negative(gui_step) -> None:
    """An alert with an error message appearing after the action is negative."""
    after = browser_obs(TREE + "\n\t[20] alert ''\n\t\tStaticText 'Email is required'")
    (evaluative, directive) = GuiDiffExtractor()(gui_step("click('10')", browser_obs(TREE),
                                                          after))
    assert evaluative.reward < 0 and "click('10')" in evaluative.next_state_excerpt
    assert "Email is required" in (directive.hint or "")


def test_navigation_and_target_change_are_positive(gui_step) -> None:
    """Navigating to another URL, or changing the clicked element, is progress."""
    moved = browser_obs("RootWebArea 'Cart'\n\t[30] heading 'Your cart'", url="http://shop.test/c",
                        title="Cart")
    (nav,) = GuiDiffExtractor()(gui_step("click('10')", browser_obs(TREE), moved))
    assert nav.reward > 0 and "url http://shop.test/ -> http://shop.test/c" in \
        nav.next_state_excerpt
    filled = browser_obs(TREE.replace("[11] textbox 'Search'",
                                      "[11] textbox 'Search' value='mouse'"))
    (fill,) = GuiDiffExtractor()(gui_step("fill('11', 'mouse')", browser_obs(TREE), filled))
    assert fill.reward > 0


def test_error_page_after_navigation_is_negative(gui_step) -> None:
    """Landing on a 404 page is negative."""
    page = browser_obs("RootWebArea '404 Not Found'\n\theading 'Not Found'",
                       url="http://shop.test/x", title="404 Not Found")
    (evaluative, _) = GuiDiffExtractor()(gui_step("goto('http://shop.test/x')",
                                                  browser_obs(TREE), page))
    assert evaluative.reward < 0


def test_large_trees_diff_once_each(gui_step) -> None:
    """A 100 KB+ tree with one changed line yields a small diff excerpt."""
    big = "\n".join(f"\t[{i}] link 'Item {i}'" for i in range(6000))
    after = big.replace("[42] link 'Item 42'", "[42] link 'Item 42', expanded=True")
    (scored,) = GuiDiffExtractor()(gui_step("click('42')", browser_obs(big), browser_obs(after)))
    assert len(big) > 100_000 and scored.reward > 0 and len(scored.next_state_excerpt) < 600


@given(st.sampled_from(["click('10')", "fill('11', 'mouse')", "scroll(0, 200)", "noop()",
                        "goto('http://shop.test/cart')", "click('99')"]),
       st.sampled_from([None, TREE]),
       st.sampled_from([TREE, TREE + "\n\t[12] alert 'Error: card declined'",
                        TREE.replace("'Search'", "'Search' value='mouse'"), "",
                        TREE + "\n\t[13] status 'Item has been added to your cart'"]),
       st.sampled_from(["", "TimeoutError: 30s", "ValueError: no element '99'"]),
       st.sampled_from(["Shop", "404 Not Found"]))
# gui_step is a stateless factory: nothing to reset between examples.
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_tuples_encode_as_tuple_from_builds_them(gui_step, action, before, after, error,
                                                 title) -> None:
    """The positional builders give, down to the encoded bytes, the tuples tuple_from built
    from the same reading (the evaluative one, and a directive one for a negative hint)."""
    step = gui_step(action, None if before is None else browser_obs(before),
                    browser_obs(after, error=error, title=title))
    name, target, value = parse_action("browser", step.action.tool_calls[0].arguments)
    before_obs = parse_observation(step.context[-1].content) if before is not None else None
    reading = read_gui_change(name, target, value, before_obs,
                              parse_observation(step.next_state[0].content))
    expected = []
    if reading is not None:
        expected.append(tuple_from(step, extractor="gui", kind="evaluative", source="gui",
                                   excerpt=reading.diff, reward=reading.reward,
                                   confidence=reading.confidence, credit="tool_args",
                                   label=reading.label))
        if reading.hint and reading.reward < 0:
            expected.append(tuple_from(step, extractor="gui", kind="directive", source="gui",
                                       excerpt=reading.diff, hint=reading.hint,
                                       confidence=min(reading.confidence, 0.7),
                                       credit="tool_args", label=reading.label))
    assert msgspec.msgpack.encode(GuiDiffExtractor()(step)) == msgspec.msgpack.encode(expected)
