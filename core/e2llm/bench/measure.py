"""What every benchmark shares: the question, the documents, clocks and the held-out items."""
from __future__ import annotations

import time

QUESTION = "Which statements does this document describe? Answer in one sentence."


def make_document(tokenizer, num_tokens: int) -> str:
    """Real English text (the Python language reference shipped with Python), cut to num_tokens."""
    import pydoc_data.topics

    topics = [v for _, v in sorted(pydoc_data.topics.topics.items())]
    text, parts = "", []
    while True:  # repeat the reference if a very long document is asked for
        for t in topics:
            parts.append(t.strip())
            if sum(len(p) for p in parts) > num_tokens * 6:
                text = "\n\n".join(parts)
                ids = tokenizer(text, add_special_tokens=False)["input_ids"][:num_tokens]
                return tokenizer.decode(ids)


def _decoder_tokens(engine, text: str) -> int:
    return len(engine.decoder_tokenizer(text, add_special_tokens=False)["input_ids"])


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


class _StepClock:
    """A streamer noting when each new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # process CPU seconds: the work done, whatever else the machine runs
        self._prompt_seen = False

    def put(self, value):
        if self._prompt_seen:
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())
        self._prompt_seen = True

    def end(self):
        pass

    def ms_per_token(self, cpu: bool = False) -> float:
        t = self.cpu_times if cpu else self.times
        return 1000 * (t[-1] - t[0]) / max(1, len(t) - 1)


def _held_out_items(items: int, length: int, tasks=None) -> list:
    """`items` held-out synthetic items at `length` tokens, spread over the tasks (default: all)."""
    from ..eval.tasks import TASKS, synthetic_items

    tasks = tasks or TASKS
    pool, _ = synthetic_items(tasks, [length], items_per_task=max(1, -(-items // len(tasks))))
    return pool[:items]
