"""Prompt layout: ``[chat-templated instruction] soft prompts [raw passages] [question]``.

The decoder's own chat template is rendered with a sentinel where the document goes, then
split there, so soft prompts sit inside the user turn exactly where the text would have.
Token ids for both sides come out of here; :mod:`e2llm.splice` turns them into embeddings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .config import PromptConfig
from .splice import Piece, Soft, Tokens

_SENTINEL = "\x00E2LLM_DOCUMENT\x00"


@dataclass(frozen=True)
class PromptIds:
    prefix: list[int]  # up to where the soft prompts go
    suffix: list[int]  # raw passages, question, assistant header
    separator: list[int]  # between the soft prompts of two documents


class PromptLayout:
    def __init__(self, tokenizer, cfg: PromptConfig):
        self.tokenizer, self.cfg = tokenizer, cfg
        self.separator = self._ids("\n")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def render(self, question: str, raw_passages: Sequence[str] = ()) -> tuple[str, str]:
        document = _SENTINEL
        if raw_passages:
            document += "\n\n" + self.cfg.raw_passages_header + "\n" + "\n\n".join(p.strip() for p in raw_passages)
        # replace, not str.format: questions may contain braces
        user = self.cfg.user.replace("{document}", document).replace("{question}", question)
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.cfg.system}, {"role": "user", "content": user}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # base models without a chat template
            text = f"{self.cfg.system}\n\n{user}\nAnswer:"
        prefix, suffix = text.split(_SENTINEL)
        return prefix, suffix

    def ids(self, question: str, raw_passages: Sequence[str] = ()) -> PromptIds:
        prefix, suffix = self.render(question, raw_passages)
        return PromptIds(self._ids(prefix), self._ids(suffix), self.separator)

    def answer_ids(self, answer: str) -> list[int]:
        """Target tokens for training: the answer, then end-of-turn so the model learns to stop."""
        eos = self.tokenizer.eos_token_id
        return self._ids(answer) + ([eos] if eos is not None else [])

    @staticmethod
    def pieces(ids: PromptIds, soft_groups: Sequence[torch.Tensor], answer_ids: Sequence[int] = ()) -> list[Piece]:
        """soft_groups: one (n_i * k, Dd) tensor per document, in document order."""
        pieces: list[Piece] = [Tokens(ids.prefix)]
        for i, group in enumerate(soft_groups):
            if i:
                pieces.append(Tokens(ids.separator))
            pieces.append(Soft(group))
        pieces.append(Tokens(ids.suffix))
        if answer_ids:
            pieces.append(Tokens(answer_ids, target=True))
        return pieces

    @staticmethod
    def num_tokens(ids: PromptIds, num_groups: int) -> int:
        """Ordinary (non-soft) tokens the prompt costs."""
        return len(ids.prefix) + len(ids.suffix) + max(0, num_groups - 1) * len(ids.separator)
