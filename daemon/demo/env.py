"""The simulated deployment: tasks, typed tools, a tiny text GUI and a simulated user.

Nothing here knows the policy. Tools validate their typed arguments and return real results
(computed from their inputs) or real errors (the message a JSON-schema validator or a
dispatcher would give); the GUI is a small settings screen whose checkboxes really toggle;
the simulated user knows its own task, checks the agent's answer against the ground truth it
computes with the same tools, and replies with thanks or a correction that says what was
wrong (sometimes rephrasing the request).
"""

from __future__ import annotations

import json
import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

CITIES = ("Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Perth", "Dakar", "Riga")
CURRENCIES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0, "CHF": 0.88}
SETTINGS = {"Dark mode": "4", "Autosave": "7", "Spell check": "9", "Notifications": "12"}

TOOL_SCHEMAS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current temperature in a city.",
        "parameters": {"type": "object", "required": ["city", "unit"], "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}},
    {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount between currencies.",
        "parameters": {"type": "object", "required": ["amount", "source", "target"],
                       "properties": {"amount": {"type": "number"},
                                      "source": {"type": "string", "enum": list(CURRENCIES)},
                                      "target": {"type": "string", "enum": list(CURRENCIES)}}}}},
    {"type": "function", "function": {
        "name": "calculator", "description": "Add or multiply two integers.",
        "parameters": {"type": "object", "required": ["a", "b", "op"], "properties": {
            "a": {"type": "integer"}, "b": {"type": "integer"},
            "op": {"type": "string", "enum": ["add", "multiply"]}}}}},
    {"type": "function", "function": {
        "name": "click", "description": "Click an element of the settings screen by its id.",
        "parameters": {"type": "object", "required": ["element"],
                       "properties": {"element": {"type": "string"}}}}},
]
_SCHEMAS = {s["function"]["name"]: s["function"]["parameters"] for s in TOOL_SCHEMAS}
_TYPES = {"string": str, "integer": int, "number": (int, float)}


class ToolError(Exception):
    """A tool call the tool rejected; the message is what the agent sees."""


def validate(name: str, arguments: str) -> dict[str, Any]:
    """Check a call against its tool's JSON schema; returns the decoded arguments.

    Raises:
        ToolError: unknown tool, arguments that are not a JSON object, a missing required
            argument, a value of the wrong type or outside the enum.
    """
    schema = _SCHEMAS.get(name)
    if schema is None:
        raise ToolError(f"Error: unknown tool '{name}'. Available: {', '.join(_SCHEMAS)}")
    try:
        args = json.loads(arguments or "{}")
    except json.JSONDecodeError as exc:
        raise ToolError(f"Error: invalid arguments JSON: {exc.msg}") from None
    if not isinstance(args, dict):
        raise ToolError("Error: invalid arguments: must be an object")
    for key in schema["required"]:
        if key not in args:
            raise ToolError(f"Error: missing required argument '{key}'")
    for key, value in args.items():
        spec = schema["properties"].get(key)
        if spec is None:
            raise ToolError(f"Error: unexpected keyword argument '{key}'")
        if isinstance(value, bool) or not isinstance(value, _TYPES[spec["type"]]):
            raise ToolError(f"Error: invalid value for '{key}': {value!r} is not of type "
                            f"'{spec['type']}'")
        if "enum" in spec and value not in spec["enum"]:
            raise ToolError(f"Error: invalid value for '{key}': must be one of "
                            f"{', '.join(spec['enum'])}")
    return args


def temperature(city: str, unit: str) -> int:
    """The (deterministic) current temperature of a city."""
    celsius = zlib.crc32(city.encode()) % 35 - 5
    return celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)


def convert(amount: float, source: str, target: str) -> float:
    """Currency conversion over the fixed rate table, rounded to cents."""
    return round(amount / CURRENCIES[source] * CURRENCIES[target], 2)


class SettingsScreen:
    """A tiny text GUI: a settings page of checkboxes, rendered as an accessibility tree."""

    def __init__(self, checked: dict[str, bool]) -> None:
        self.checked = dict(checked)

    def observation(self, error: str = "") -> str:
        """The screen as a GUI tool result (BrowserGym-style JSON)."""
        lines = ["[1] heading 'Settings'"]
        lines += [f"[{eid}] checkbox '{label}' checked={str(self.checked[label]).lower()}"
                  for label, eid in SETTINGS.items()]
        return json.dumps({"url": "app://settings", "title": "Settings",
                           "axtree": "\n".join(lines), "error": error})

    def summary(self) -> str:
        """The screen as the user pastes it into a request: one line per checkbox."""
        return "\n".join(f"[{eid}] {label}: {'on' if self.checked[label] else 'off'}"
                         for label, eid in SETTINGS.items())

    def click(self, element: str) -> str:
        """Toggle the checkbox with that id; an unknown id is the GUI's own error."""
        for label, eid in SETTINGS.items():
            if eid == element:
                self.checked[label] = not self.checked[label]
                return self.observation()
        return self.observation(error=f"Error: no element with id '{element}' on this page")


@dataclass
class Task:
    """One user task: what the user asks and what counts as done.

    Attributes:
        kind: weather, convert, calc or gui.
        request: the user's request text.
        rephrased: another wording of the same request (used in some corrections).
        params: the task's ground-truth parameters.
        screen: the GUI state (gui tasks only).
    """

    kind: str
    request: str
    rephrased: str
    params: dict[str, Any]
    screen: SettingsScreen | None = None
    attempts: int = field(default=0)

    def expected(self) -> str:
        """The value a correct answer must state (computed, never looked up from the agent)."""
        p = self.params
        if self.kind == "weather":
            return str(temperature(p["city"], p["unit"]))
        if self.kind == "convert":
            return f"{convert(p['amount'], p['source'], p['target']):.2f}"
        if self.kind == "calc":
            return str(p["a"] + p["b"] if p["op"] == "add" else p["a"] * p["b"])
        return "on"

    def done(self, answer: str) -> bool:
        """Whether the user is satisfied by ``answer`` (and, for GUI tasks, the screen)."""
        if self.kind == "gui":
            assert self.screen is not None
            on = re.search(rf"{re.escape(self.params['setting'])}: on\b", answer) is not None
            return self.screen.checked[self.params["setting"]] and on
        # The exact number, not a substring of another one ("4" is not in "1234").
        pattern = rf"(?<![\d.]){re.escape(self.expected())}(?!\.?\d)"
        return re.search(pattern, answer) is not None

    def correction(self, answer: str, rng: random.Random) -> str:
        """A correction that says what was wrong (a directive hint), sometimes rephrased."""
        p = self.params
        if self.kind == "weather":
            what = f"I asked for the temperature in {p['city']} in {p['unit']}"
        elif self.kind == "convert":
            what = f"I asked for {p['amount']} {p['source']} in {p['target']}"
        elif self.kind == "calc":
            verb = "plus" if p["op"] == "add" else "times"
            what = f"I asked for {p['a']} {verb} {p['b']}"
        else:
            what = f"{p['setting']} should be on, and you should use the click tool"
        if rng.random() < 0.3:
            return f"No, that's wrong. Let me rephrase: {self.rephrased}"
        if "could not" in answer.lower():
            return f"That's not helpful, please use the tools. {what}."
        return f"No, that's wrong: {what}."


def make_task(rng: random.Random) -> Task:
    """Draw a task uniformly over the four kinds."""
    kind = rng.choice(("weather", "convert", "calc", "gui"))
    if kind == "weather":
        city, unit = rng.choice(CITIES), rng.choice(("celsius", "fahrenheit"))
        return Task(kind, f"What's the weather in {city}? Answer in {unit}.",
                    f"How warm is it in {city} right now, in degrees {unit}?",
                    {"city": city, "unit": unit})
    if kind == "convert":
        source, target = rng.sample(list(CURRENCIES), 2)
        amount = rng.randint(2, 500)
        return Task(kind, f"How much is {amount} {source} in {target}?",
                    f"Please convert {amount} {source} to {target}.",
                    {"amount": amount, "source": source, "target": target})
    if kind == "calc":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice(("add", "multiply"))
        verb = "plus" if op == "add" else "times"
        return Task(kind, f"What is {a} {verb} {b}?", f"Compute {a} {verb} {b} for me.",
                    {"a": a, "b": b, "op": op})
    setting = rng.choice(list(SETTINGS))
    checked = {label: rng.random() < 0.5 for label in SETTINGS}
    checked[setting] = False
    screen = SettingsScreen(checked)
    return Task(kind, f"Turn on {setting} in the settings. The screen:\n{screen.summary()}",
                f"Please enable {setting} on the settings page.",
                {"setting": setting}, screen=screen)


def run_tool(task: Task, name: str, arguments: str) -> str:
    """Execute a tool call for ``task``: its real result, or the real error text."""
    try:
        args = validate(name, arguments)
    except ToolError as exc:
        return str(exc)
    if name == "get_weather":
        if args["city"] not in CITIES:
            return f"Error: unknown city '{args['city']}'"
        return json.dumps({"city": args["city"], "unit": args["unit"],
                           "temperature": temperature(args["city"], args["unit"])})
    if name == "convert_currency":
        result = convert(args["amount"], args["source"], args["target"])
        return json.dumps({"amount": args["amount"], "source": args["source"],
                           "target": args["target"], "result": f"{result:.2f}"})
    if name == "calculator":
        a, b = args["a"], args["b"]
        return json.dumps({"result": a + b if args["op"] == "add" else a * b})
    if task.screen is None:
        return json.dumps({"url": "app://home", "title": "Home", "axtree": "[1] heading 'Home'",
                           "error": f"Error: no element with id '{args['element']}' on this page"})
    return task.screen.click(args["element"])
