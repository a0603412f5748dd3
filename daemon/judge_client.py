"""An OpenAI-compatible chat-completions client for the LLM judge (stdlib HTTP only).

The judge extractor stays pure and takes a ``complete(messages, n) -> JudgeReply`` callable;
this module is that callable over HTTP: ``POST {base_url}/chat/completions``. The API key is
read from the environment variable the config names, sent only in the ``Authorization``
header, and never logged or put in an error message.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from nextstate.extractors.judge import JudgeReply


class JudgeRequestError(RuntimeError):
    """The endpoint failed or answered something that is not a chat completion."""


class OpenAIJudgeClient:
    """``complete(messages, n)`` over an OpenAI-compatible ``/chat/completions`` endpoint.

    Asks for ``n`` choices in one request; servers that ignore ``n`` are asked again until
    ``n`` texts are collected (at most ``n`` requests), and the token usage is summed.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: the model name sent in each request.
        api_key_env: environment variable holding the API key; none sent when unset.
        timeout_s: socket timeout per request.
        temperature: sampling temperature (k samples need > 0 to differ).
        max_tokens: completion limit per choice.

    Example:
        >>> client = OpenAIJudgeClient("http://127.0.0.1:8000/v1", "judge")
        >>> client.url
        'http://127.0.0.1:8000/v1/chat/completions'
    """

    __slots__ = ("api_key_env", "max_tokens", "model", "temperature", "timeout_s", "url")

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None,
                 timeout_s: float = 30.0, temperature: float = 0.7,
                 max_tokens: int = 200) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.temperature = temperature
        self.max_tokens = max_tokens

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(payload).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            error.close()  # it holds the response's socket
            raise JudgeRequestError(f"judge endpoint answered HTTP {error.code}") from None
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as error:
            raise JudgeRequestError(f"judge request failed: {type(error).__name__}") from None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise JudgeRequestError("judge endpoint answered no choices")
        return body

    def __call__(self, messages: list[dict[str, str]], n: int) -> JudgeReply:
        texts: list[str] = []
        prompt_tokens = completion_tokens = 0
        for _ in range(max(1, n)):
            body = self._post({"model": self.model, "messages": messages,
                               "n": n - len(texts), "temperature": self.temperature,
                               "max_tokens": self.max_tokens})
            usage = body.get("usage") or {}
            prompt_tokens += int(usage.get("prompt_tokens", 0))
            completion_tokens += int(usage.get("completion_tokens", 0))
            texts.extend(str((c.get("message") or {}).get("content") or "")
                         for c in body["choices"])
            if len(texts) >= n:
                break
        return JudgeReply(texts[:n], prompt_tokens, completion_tokens)
