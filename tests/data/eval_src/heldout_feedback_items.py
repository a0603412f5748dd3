"""Held-out feedback cases."""

CASES = [
    ([(1.0, "👍")], 1, None),
    ([(-1.0, "outdated info")], -1, "outdated info"),
    ([(-1.0, "Use the 2024 prices")], -1, "2024 prices"),
    ([(None, "Wrong language, I need Spanish.")], -1, "Spanish"),
    ([(None, "thanks, very useful")], 1, None),
    ([(0.3, None)], 1, None),
    ([(-0.7, "missed the second question")], -1, "second question"),
    ([(1.0, None), (0.5, "good")], 1, None),
    ([(None, "Should cite the source.")], -1, "cite the source"),
    ([(-1.0, None), (1.0, None)], 0, None),
]
