"""The prompt of a grounded answer, the context-window policy, and citations.

Template (TEMPLATE_VERSION, part of the semantic cache's key): a system message with the rules,
the conversation's earlier turns, then one user message holding the numbered passages and the
question. The model is asked to cite passages as [n]; citations map those numbers back to the
chunks that were retrieved, and to where the answer mentions them.

Context-window policy, in the chat model's own tokens: the completion keeps room for its
max_tokens (at most half the window); the question, the rules and the history must fit in the
rest, the oldest turns dropped first while they do not (400 context_too_long when even the
question alone does not fit); passages then fill what is left in rank order, and the
lowest-ranked ones that no longer fit are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from service.inference.chat import ChatMessage, ContextTooLong, Generator

TEMPLATE_VERSION = "rag-v1"

SYSTEM = (
    "Answer the question using only the numbered context passages. Cite every passage you use "
    "with its number in square brackets, like [1] or [2]. If the passages do not contain the "
    "answer, say that you do not know."
)

# Tokens a passage costs besides its text: its "[n] " label and the blank line after it.
_PASSAGE_OVERHEAD = 4
_CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


def passage_text(number: int, text: str) -> str:
    return f"[{number}] {text}"


def user_message(question: str, passages: list[str]) -> str:
    if not passages:
        return f"Context: (no passages were found)\n\nQuestion: {question}"
    numbered = "\n\n".join(passage_text(i, text) for i, text in enumerate(passages, start=1))
    return f"Context:\n\n{numbered}\n\nQuestion: {question}"


def build_messages(question: str, history: list[ChatMessage], passages: list[str]) -> list[ChatMessage]:
    return [
        ChatMessage("system", SYSTEM),
        *history,
        ChatMessage("user", user_message(question, passages)),
    ]


@dataclass(frozen=True, slots=True)
class Fitted:
    messages: list[ChatMessage]
    chosen: int  # the first `chosen` hits are passages 1..chosen
    tokens: list[int]  # tokens of each chosen passage's text
    dropped_passages: int
    dropped_turns: int


async def fit(
    generator: Generator,
    question: str,
    history: list[ChatMessage],
    texts: list[str],
    *,
    reserve: int,
    passage_budget: int | None = None,
) -> Fitted:
    """Apply the context-window policy (module docstring). passage_budget caps the passages'
    tokens further (the /context endpoint's max_tokens)."""
    window = generator.n_ctx - min(reserve, generator.n_ctx // 2)
    turns = list(history)
    base = await generator.prompt_tokens(build_messages(question, turns, []))
    dropped_turns = 0
    while base > window and turns:
        turns.pop(0)
        dropped_turns += 1
        base = await generator.prompt_tokens(build_messages(question, turns, []))
    if base > window:
        raise ContextTooLong(
            prompt_tokens=base,
            limit=window,
            model=generator.name,
            option=f"generation.models.{generator.name}.n_ctx, less the completion's max_tokens",
        )
    budget = window - base
    if passage_budget is not None:
        budget = min(budget, passage_budget)
    counts = await generator.count_tokens(texts) if texts else []
    used = chosen = 0
    for count in counts:
        if used + count + _PASSAGE_OVERHEAD > budget:
            break
        used += count + _PASSAGE_OVERHEAD
        chosen += 1
    return Fitted(
        messages=build_messages(question, turns, texts[:chosen]),
        chosen=chosen,
        tokens=counts[:chosen],
        dropped_passages=len(texts) - chosen,
        dropped_turns=dropped_turns,
    )


def cited_positions(answer: str, passages: int) -> dict[int, list[int]]:
    """passage number -> offsets in the answer where it is cited ([2], [1, 3]); numbers outside
    1..passages (the model made them up) are ignored."""
    found: dict[int, list[int]] = {}
    for match in _CITATION.finditer(answer):
        for part in match.group(1).split(","):
            number = int(part)
            if 1 <= number <= passages:
                found.setdefault(number, []).append(match.start())
    return found


def cache_fields(**fields: Any) -> dict[str, Any]:
    """What the semantic cache's key is made of, with the template's version."""
    return {"template": TEMPLATE_VERSION, **fields}
