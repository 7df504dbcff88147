"""The server's checks of a request's JSON body, before it is queued.

mlx-lm 0.32.2's handler checks types and a few ranges; what it lets through
either raised inside the generation thread's batch step (a ``top_k`` at or
above the vocabulary, a context size of 2**31: every request in the batch
failed with it) or escaped the handler as a ``TypeError`` (``logit_bias``
values that are lists: the connection closed without an answer). Every
check here raises ``RequestError``, which the handler answers with a 400 and
a JSON body. The handler (``handler.TalkieAPIHandler.validate_model_parameters``)
calls ``check_logit_bias`` before mlx-lm's own checks, then ``check_fields``,
``model_limits`` and ``check_request``. ``model_limits`` needs the loaded
model's vocabulary: the handler calls it when the model is loaded, the
generation thread again for the model it serves the request with.
"""

from __future__ import annotations

import json
import math

#: Largest context size mlx-lm's penalties take: they slice the last N tokens,
#: and MLX's slice indices are int32.
MAX_CONTEXT_SIZE = 2**31 - 1

INTEGER_FIELDS = ("max_tokens", "top_k", "num_draft_tokens", "repetition_context_size",
                  "presence_context_size", "frequency_context_size", "top_logprobs")
NUMBER_FIELDS = ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty", "xtc_probability", "xtc_threshold")
CONTEXT_FIELDS = ("repetition_context_size", "presence_context_size", "frequency_context_size")


class RequestError(ValueError):
    """A request the server cannot serve as sent: answered with a 400."""


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return (is_int(v) or isinstance(v, float)) and math.isfinite(v)


def check_fields(values: dict) -> None:
    """The sampling and logits fields (name -> value, after mlx-lm's own checks)."""
    for name in INTEGER_FIELDS:
        if not is_int(values[name]):
            raise RequestError(f"{name} must be an integer")
    for name in NUMBER_FIELDS:
        if not is_number(values[name]):
            raise RequestError(f"{name} must be a finite number")
    for name in CONTEXT_FIELDS:
        if values[name] > MAX_CONTEXT_SIZE:
            raise RequestError(f"{name} must be at most 2**31 - 1 (it is {values[name]})")
    seed = values["seed"]
    if seed is not None and not (is_int(seed) and 0 <= seed < 2**64):
        raise RequestError("seed must be an integer in [0, 2**64)")


def check_logit_bias(bias) -> None:
    """``logit_bias`` as sent (JSON object keys are strings), before mlx-lm converts it."""
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise RequestError(
            f"logit_bias must be a dict of token ids to finite numbers, not {type(bias).__name__}"
        )
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise RequestError(
                f"logit_bias must be a dict of token ids to finite numbers: key {key!r} is not "
                "a token id (an integer >= 0)"
            )
        if not is_number(value):
            raise RequestError(
                f"logit_bias must be a dict of token ids to finite numbers: logit_bias[{key!r}] is "
                f"{json.dumps(value)[:40]}, not a finite number"
            )


def model_limits(top_k: int, logit_bias: dict | None, vocab: int) -> int:
    """Check ``top_k`` and ``logit_bias``'s ids against a vocabulary of ``vocab`` ids;
    -> the ``top_k`` to sample with.

    ``top_k`` may be 0 (no filtering) up to ``vocab``: ``vocab`` keeps every id,
    so it is passed on as 0 (mlx-lm's sampler refuses ``top_k >= vocab``).
    """
    if top_k > vocab:
        raise RequestError(f"top_k must be at most the vocabulary size ({vocab}), not {top_k}")
    if logit_bias:
        outside = [k for k in logit_bias if not 0 <= k < vocab]
        if outside:
            raise RequestError(
                f"logit_bias names token id {outside[0]}, outside the vocabulary (ids 0 to {vocab - 1})"
            )
    return 0 if top_k == vocab else top_k


def _check_content(i: int, content) -> None:
    where = f"messages[{i}].content"
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise RequestError(f"{where} must be a string, a list of text parts or null, not {type(content).__name__}")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise RequestError(
                f"{where}[{j}] must be a text part {{\"type\": \"text\", \"text\": \"...\"}} "
                "(Talkie is a text model)"
            )


def check_messages(messages) -> None:
    if not isinstance(messages, list):
        raise RequestError(f"messages must be a list, not {type(messages).__name__}")
    if not messages:
        raise RequestError("messages is empty: nothing to answer")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object with a role and content")
        if not isinstance(m.get("role"), str) or not m["role"]:
            raise RequestError(f"messages[{i}].role must be a non-empty string")
        _check_content(i, m.get("content"))
        calls = m.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
            raise RequestError(f"messages[{i}].tool_calls must be a list of objects")


def check_prompt(prompt) -> None:
    if not isinstance(prompt, str):
        raise RequestError(f"prompt must be a string, not {type(prompt).__name__}")
    if not prompt:
        raise RequestError("prompt is empty: nothing to complete")


def check_stop(stop) -> None:
    words = [stop] if isinstance(stop, str) else stop
    if stop is None:
        return
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise RequestError("stop must be a string or a list of strings")
    if any(w == "" for w in words):
        raise RequestError("stop words must not be empty")


def check_request(path: str, body: dict, *, draft_model, stream_options, chat_template_kwargs) -> None:
    """The rest of a request besides its sampling and logits fields (``check_fields``):
    ``draft_model``, ``stream_options`` and ``chat_template_kwargs`` as mlx-lm's handler
    read them from ``body``, the stop words, and the prompt (``path`` ``/v1/completions``)
    or the messages, tools and role mapping (the chat endpoints)."""
    if not isinstance(draft_model, str):
        raise RequestError("draft_model must be a string")
    if stream_options is not None and not (
        isinstance(stream_options, dict)
        and isinstance(stream_options.get("include_usage", False), bool)
    ):
        raise RequestError("stream_options must be an object whose include_usage is a boolean")
    check_stop(body.get("stop"))
    if chat_template_kwargs is not None and not isinstance(chat_template_kwargs, dict):
        raise RequestError("chat_template_kwargs must be an object")
    if path == "/v1/completions":
        if "prompt" not in body:
            raise RequestError("Request did not contain a prompt")
        check_prompt(body["prompt"])
    else:
        if "messages" not in body:
            raise RequestError("Request did not contain messages")
        check_messages(body["messages"])
        tools = body.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise RequestError("tools must be a list of objects")
        mapping = body.get("role_mapping")
        if mapping is not None and not (
            isinstance(mapping, dict) and all(isinstance(v, str) for v in mapping.values())
        ):
            raise RequestError("role_mapping must map names to strings")
