"""The pieces of a cascade (`cascades:` in the config) that need no Ray: do two answers agree, and
an answer replayed as the stream a client asked for.

A cascade asks its weak and verifier models the same request at once and returns the weak answer
when the two agree; otherwise the strong model answers. On RouterBench, escalating on
disagreement holds on tasks nothing was trained on, where routing on the prompt does not
(docs/benchmarks.md, sixth pass): the signal is in the answers, not the prompt.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, AsyncIterator, Literal

Compare = Literal["text", "final_answer", "program"]

_SPACE = re.compile(r"\s+")
_EDGES = " \t\n\"'`.,;:!?()[]{}*"
# Where a worked answer states its result, as math and multiple-choice prompts ask for it: GSM8K's
# "#### 42", "the (final) answer is 42.", "Answer: (B)". The result ends at a full stop, comma
# or semicolon followed by a space or the end (so "3.5" and "1,000" stay whole) or at a line break:
# "The answer is B, because ..." states B.
_STATED = re.compile(r"(?:####|\b(?:final answer|answer)\s*(?:is|:|=))\s*(.+?)(?=[.,;]\s|[.,;]?$|\n)",
                     re.IGNORECASE | re.MULTILINE)
_BOXED = "\\boxed{"
_NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?%?$", re.IGNORECASE)


def _boxed(text: str) -> str | None:
    """The content of the last LaTeX `\\boxed{...}` (braces balanced), if any."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, i = 1, start + len(_BOXED)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def final_answer(text: str) -> str | None:
    """The result a worked answer states (`\\boxed{}`, `#### x`, "the answer is x", "Answer: x"),
    the last one stated; None when it states none (free text is compared whole)."""
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    stated = _STATED.findall(text)
    return stated[-1] if stated else None


_CODE_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\r?\n(.*?)```", re.IGNORECASE | re.DOTALL)
_MAX_PROGRAM_CHARS = 8_000  # ~1.4 ms per 1k characters here (parse, walk, dump); longer ones compare as text
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _canonical(tree: ast.Module) -> str:
    """`ast.dump` of the module with what it binds (arguments, locals, inner functions) renamed by
    first appearance, docstrings and annotations dropped; top-level definition names (the interface
    a caller uses), builtins and imported names kept. One walk of the tree."""
    top = {n.name for n in tree.body if isinstance(n, _DEFINITIONS)}
    bound: set[str] = set()
    seen: list[tuple[ast.AST, str, str]] = []  # (node, attribute, name) in walk order
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            seen.append((n, "id", n.id))
            if isinstance(n.ctx, ast.Store):
                bound.add(n.id)
        elif isinstance(n, ast.arg):
            n.annotation = None
            seen.append((n, "arg", n.arg))
            bound.add(n.arg)
        elif isinstance(n, _DEFINITIONS):
            seen.append((n, "name", n.name))
            bound.add(n.name)
            if not isinstance(n, ast.ClassDef):
                n.returns = None
            body = n.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                n.body = body[1:] or [ast.Pass()]
    bound -= top
    names: dict[str, str] = {}
    for node, attr, name in seen:
        if name in bound:
            setattr(node, attr, names.setdefault(name, f"_{len(names)}"))
    return ast.dump(tree, annotate_fields=False)


def program_key(text: str) -> str | None:
    """The Python definitions an answer gives (its first fenced code block that parses and defines
    something, else the whole text), with bound names renamed by first appearance, docstrings,
    annotations, comments and example usage (top-level statements other than definitions and
    imports) taken out; None when there is no Python function or class in it. Parsed, never run."""
    for code in [*_CODE_BLOCK.findall(text), text]:
        if len(code) > _MAX_PROGRAM_CHARS:
            continue
        try:
            tree = ast.parse(code.replace("\r\n", "\n"))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        tree.body = [n for n in tree.body if isinstance(n, (*_DEFINITIONS, ast.Import, ast.ImportFrom))]
        if any(isinstance(n, _DEFINITIONS) for n in tree.body):
            return _canonical(tree)
    return None


def _normalise(text: str) -> str:
    norm = _SPACE.sub(" ", text).strip(_EDGES).casefold()
    number = norm.lstrip("$").strip()
    if _NUMBER.match(number):  # $1,000 / 1000.0 / 1e3 are one number
        try:
            value = float(number.replace(",", "").rstrip("%"))
            norm = f"{value:.12g}" + ("%" if number.endswith("%") else "")
        except ValueError:
            pass
    return norm


def answer_key(result: dict[str, Any], compare: Compare = "text") -> str:
    """What two answers must share to agree: the first choice's text (chat or completion),
    case-folded, whitespace collapsed, quotes and punctuation at the ends dropped, plus its tool
    calls (name and arguments). With `final_answer`, only the result the text states, when it
    states one: two worked solutions that reach 42 by different words agree. With `program`, the
    Python it defines (`program_key`), when it defines any: two answers that write the same
    function in other words, variable names or comments agree."""
    choices = result.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    text = str((message.get("content") if "message" in choice else choice.get("text")) or "")
    calls = [(c.get("function") or {}).get("name", "") + (c.get("function") or {}).get("arguments", "")
             for c in message.get("tool_calls") or [] if isinstance(c, dict)]
    suffix = "\x00" + json.dumps(calls) if calls else ""
    if compare == "program" and (program := program_key(text)) is not None:
        return "\x01" + program + suffix  # never equal to a normalised text
    stated = final_answer(text) if compare == "final_answer" else None
    return _normalise(text if stated is None else stated) + suffix


def agree(a: dict[str, Any], b: dict[str, Any], compare: Compare = "text") -> bool:
    """Two answers agree when their keys match; two empty answers never do (nothing was said)."""
    ka, kb = answer_key(a, compare), answer_key(b, compare)
    return bool(ka) and ka == kb


async def replay(result: dict[str, Any], include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    """A complete chat or text completion as the chunks a streaming upstream would have sent:
    the content, a finish chunk, and the usage chunk when the client asked for it."""
    chat = result.get("object") == "chat.completion"
    base = {"id": result.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": result.get("created"), "model": result.get("model")}
    for choice in result.get("choices") or []:
        i = choice.get("index", 0)
        if chat:
            msg = choice.get("message") or {}
            delta: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
            if msg.get("tool_calls"):
                delta["tool_calls"] = [{**c, "index": j} for j, c in enumerate(msg["tool_calls"])]
            yield {**base, "choices": [{"index": i, "delta": delta, "finish_reason": None}]}
            yield {**base, "choices": [{"index": i, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
        else:
            yield {**base, "choices": [{"index": i, "text": choice.get("text") or "",
                                        "finish_reason": choice.get("finish_reason")}]}
    if include_usage and result.get("usage"):
        yield {**base, "choices": [], "usage": result["usage"]}
