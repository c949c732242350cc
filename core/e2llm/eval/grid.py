"""The evaluation's grid: task, system and length names and defaults, with no heavy import.

``e2llm eval --help`` builds its parser from these, so this module imports neither torch nor
e2llm.train; :mod:`.tasks` and :mod:`.systems` import them from here and export them as before.
"""
from __future__ import annotations

import re

from ..errors import InputError

EVAL_SEED = 1000  # synthetic items of length L use sample seed EVAL_SEED + L

TASKS = ("single_fact", "multi_fact", "two_chunk", "aggregation", "topic")
# Asked for by name only (--tasks mention): which of four names the document mentions, a probe
# of what the soft prompts carry at short lengths rather than a long-document task.
# reworded_fact: single_fact's needle, stated and asked in words the training templates never use.
# real_fact: a word the real text states once, asked as the blank of its own sentence (nothing
# inserted); real_field: a field structured real text states once (a changelog entry's signer or
# date, a package's author or version, a copyright stanza's licence; --docs with such text);
# unanswerable: a fact about an entity the document never names (right = abstaining).
OPT_IN_TASKS = ("mention", "reworded_fact", "real_fact", "real_field", "unanswerable")
KNOWN_TASKS = TASKS + OPT_IN_TASKS

DEFAULT_LENGTHS = (2048, 4096, 8192, 16384, 32768, 65536)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_ITEMS = 10  # per task and length
# --quick: about 12 items, 60 answers, sized for < 10 minutes on 2 CPU cores with the default
# models; it still reaches the 4K and 16K quality targets (the heat map has 2 x 2 cells).
QUICK_LENGTHS = (4096, 16384)
QUICK_DEPTHS = (0.25, 0.75)
QUICK_ITEMS = 1

DEFAULT_SYSTEMS = ("e2llm", "e2llm_hybrid", "rag", "rag_hybrid_budget", "full", "none")
CONTROL_SYSTEMS = ("e2llm_raw", "e2llm_swapped", "rag_top_n")  # asked for by name (--systems)
SYSTEMS = ("e2llm", "e2llm_hybrid", "e2llm_raw", "e2llm_swapped", "rag", "rag_top_n", "rag_hybrid_budget", "full",
           "none")


def parse_length(text: str) -> int:
    """'2K' / '2k' -> 2048, '64K' -> 65536, '3000' -> 3000."""
    m = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", str(text))
    if not m or int(m.group(1)) <= 0:
        raise InputError(f"bad context length {text!r}; write e.g. 2K, 16K or 3000")
    return int(m.group(1)) * (1024 if m.group(2) else 1)


def format_length(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)
