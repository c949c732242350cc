"""Evaluation items: synthetic long-document tasks over held-out real text, or a JSONL dataset.

Synthetic tasks reuse :func:`e2llm.train.make_qa_samples` on the *validation* side of
the same document split the trainer uses (``SPLIT_SEED``, ``VAL_FRACTION``), with their own
sample seeds (``EVAL_SEED + length``), so no evaluation document was trained on. The trainer
must split with the same two constants. Or on a folder of the user's own documents
(:func:`folder_documents`, ``e2llm eval --docs FOLDER``): text of another kind than the
training corpus. ``reworded_fact`` (asked for by name) is a single fact stated and asked in
other words than the training templates.

Lengths are decoder tokens: the synthetic generator asks for words, so the words-per-token
ratio of the decoder's tokenizer on the held-out text is measured first
(:func:`calibrate_tokens_per_word`). Each item records its measured length too.

Real data (``load_dataset``): LongBench / LongBench v2 / RULER-style JSONL with ``context``,
``input`` or ``question``, ``answers`` (list) / ``answer`` / ``outputs``, optional ``choices``
or ``choice_A`` .. ``choice_D`` (then multiple choice); items are bucketed by length.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..errors import InputError
# the trainer's public surface: its corpus, its document split (evaluation reads the held-out
# side) and its QA generator
from ..train import (SPLIT_SEED, VAL_FRACTION, DataError, Document, iter_jsonl_records, iter_text_files, load_corpus,
                     make_qa_samples, split_documents)
from .grid import (DEFAULT_DEPTHS, DEFAULT_ITEMS, DEFAULT_LENGTHS, EVAL_SEED, KNOWN_TASKS, OPT_IN_TASKS,  # noqa: F401
                   QUICK_DEPTHS, QUICK_ITEMS, QUICK_LENGTHS, TASKS, format_length, parse_length)
from .metrics import LETTERS, METRICS

# needle placed at each grid depth (the heat map); real_fact's depth is where its sentence happens to be
DEPTH_TASKS = frozenset({"single_fact", "reworded_fact"})
METRIC_BY_TASK = {"single_fact": "contains", "multi_fact": "contains", "two_chunk": "contains",
                  "aggregation": "choice", "topic": "choice", "mention": "choice", "reworded_fact": "contains",
                  "real_fact": "contains", "real_field": "contains", "unanswerable": "abstain"}
# (fact, question) pairs for reworded_fact; the training generator writes
# "The {attribute} of the {entity} is {value}." and asks "What is the {attribute} of the {entity}?"
REWORDINGS = (
    ("Records show that {value} is what the {entity} uses as its {attribute}.",
     "Which {attribute} does the {entity} use?"),
    ("According to the notes, the {entity} was assigned {value} as {attribute}.",
     "Tell me the {attribute} assigned to the {entity}."),
    ("For the {entity}, the {attribute} on file reads {value}.",
     "What {attribute} is on file for the {entity}?"),
)
_FACT = re.compile(r"The (?P<attribute>.+) of the (?P<entity>.+) is (?P<value>.+)\.")

SYNTHETIC_STOP = ("\n\n",)  # synthetic answers are one short paragraph: stop rambling there

SUMMARY_QUESTION = "Summarize the document."
MC_SUFFIX = "Answer with the letter of the right choice."


@dataclass
class EvalItem:
    task: str
    length: int  # nominal context length in decoder tokens (grid value, or bucket for real data)
    item_id: str
    context: str
    question: str
    answers: list[str]
    metric: str  # see e2llm.eval.metrics
    choices: Optional[list[str]] = None
    answer_index: Optional[int] = None
    letters: bool = False  # the question lists the choices with letters
    depth: Optional[float] = None  # needle depth 0..1 (single_fact)
    source: str = "synthetic"
    meta: dict[str, Any] = field(default_factory=dict)
    stop: tuple[str, ...] = ()  # stop strings for the answer (none for real data: summaries have paragraphs)

    @property
    def content_hash(self) -> str:
        """Short hash of what is asked; cached results of a changed item are not reused."""
        digest = hashlib.sha256("\0".join([self.context, self.question, *self.answers, *self.stop]).encode())
        return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------ lengths (parse_length, format_length: .grid)


def length_bucket(tokens: int) -> int:
    """The power of two at or above ``tokens`` (at least 1K): real data is grouped by these."""
    return max(1024, 2 ** math.ceil(math.log2(max(tokens, 1))))


# ---------------------------------------------------------------------------- synthetic


def heldout_documents() -> list[Document]:
    """The built-in corpus documents the trainer never sees (its validation side)."""
    return split_documents(load_corpus(), SPLIT_SEED, VAL_FRACTION)[1]


def folder_documents(folder: str | Path) -> list[Document]:
    """Every .txt / .md file (and JSONL line with a ``text`` field) under ``folder``, one
    document each: the user's own text for the synthetic tasks (``e2llm eval --docs``)."""
    path = Path(folder)
    if not path.exists():
        raise InputError(f"--docs {folder}: no such folder; pass a folder of .txt or .md documents")
    docs = list(iter_text_files(path, on_error="raise", min_chars=200))
    if len(docs) < 2:
        raise InputError(f"--docs {folder}: {len(docs)} document(s) of at least 200 characters (.txt, .md or .jsonl); "
                         "the tasks need several documents: add more files")
    return docs


def calibrate_tokens_per_word(count_tokens: Callable[[str], int], docs: Sequence[Document]) -> float:
    """Decoder tokens per whitespace word over ``docs``, rounded to 0.01 (stable across runs)."""
    words = sum(doc.num_words for doc in docs)
    if not words:
        raise ValueError("no words to calibrate on")
    return round(sum(count_tokens(doc.text) for doc in docs) / words, 2)


def _item_from_sample(task: str, length: int, item_id: str, sample: dict) -> EvalItem:
    meta = sample["meta"]
    choices = answer_index = None
    if "choices" in meta:  # kinds that list their choices (topic, mention)
        choices = list(meta["choices"])
    elif task == "aggregation":
        choices = list(meta["counts"])
    if choices is not None:
        answer_index = choices.index(sample["answer"])
    keep = {k: meta[k] for k in ("doc_ids", "num_words", "seed", "index") if k in meta}
    answers = [sample["answer"], *meta.get("aliases", ())]  # real_field's dates, also in other spellings
    return EvalItem(task, length, item_id, sample["context"], sample["prompt"], answers,
                    METRIC_BY_TASK[task], choices, answer_index, False, meta.get("depth"), "synthetic", keep,
                    SYNTHETIC_STOP)


def synthetic_items(tasks: Sequence[str] = TASKS, lengths: Sequence[int] = DEFAULT_LENGTHS,
                    depths: Sequence[float] = DEFAULT_DEPTHS, items_per_task: int = DEFAULT_ITEMS, *,
                    tokens_per_word: float = 1.3, docs: Optional[Sequence[Document]] = None,
                    seed: int = EVAL_SEED) -> tuple[list[EvalItem], list[str]]:
    """Items for every task x length (single_fact: spread over ``depths``, the same haystack
    at each depth). Returns (items, skipped): a cell the held-out text cannot fill is
    skipped with a reason instead of failing the run."""
    unknown = [t for t in tasks if t not in KNOWN_TASKS]
    if unknown:
        raise InputError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(KNOWN_TASKS)}")
    if items_per_task < 1:
        raise InputError("--items must be at least 1")
    if any(not 0.0 <= d <= 1.0 for d in depths) or not depths:
        raise InputError(f"needle depths must be between 0 and 1, got {list(depths)}")
    docs = heldout_documents() if docs is None else list(docs)
    items, skipped = [], []
    for length in lengths:
        for task in tasks:
            try:
                items += _cell(task, length, depths, items_per_task, tokens_per_word, docs, seed + length)
            except ValueError as e:
                skipped.append(f"{task} at {format_length(length)}: {e}")
    return items, skipped


def load_run(folder: str | Path) -> dict:
    """The settings (run.json) of a synthetic ``e2llm eval`` output folder, for scripts that
    rebuild its items; a missing, garbled or --data run.json raises a one-line InputError."""
    path = Path(folder) / "run.json"
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{folder}: no run.json; pass the --output folder of an e2llm eval run") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable JSON file ({e}); rerun the eval to rewrite it") from None
    if not isinstance(run, dict):
        raise InputError(f"{path}: expected a JSON object of eval settings")
    if run.get("data"):
        raise InputError(f"{folder}: a --data run; only synthetic runs can be rebuilt")
    return run


def run_items(run: dict, tasks: Optional[Sequence[str]] = None) -> list[EvalItem]:
    """The synthetic items of a finished ``e2llm eval`` run, rebuilt from the settings its
    run.json records (same tasks, lengths, depths, items, tokens per word and seed: same items)."""
    missing = [k for k in ("tasks", "lengths", "depths", "items_per_task", "tokens_per_word", "seed") if k not in run]
    if missing:
        raise InputError(f"run.json lacks {', '.join(missing)}: not the settings of a synthetic e2llm eval run")
    docs = folder_documents(run["docs"]) if run.get("docs") else None
    items, _ = synthetic_items(run["tasks"] if tasks is None else tasks, run["lengths"], run["depths"],
                               run["items_per_task"], tokens_per_word=run["tokens_per_word"], docs=docs, seed=run["seed"])
    return items


def reword_fact(sample: dict, index: int) -> dict:
    """A single_fact sample with its fact sentence and question in other words (REWORDINGS,
    chosen by ``index``); the answer and where the fact sits are unchanged."""
    (fact,) = sample["meta"]["facts"]
    parts = _FACT.fullmatch(fact).groupdict()
    new_fact, question = (t.format(**parts) for t in REWORDINGS[index % len(REWORDINGS)])
    meta = {**sample["meta"], "facts": [new_fact]}
    return {**sample, "context": sample["context"].replace(fact, new_fact, 1), "prompt": question,
            "kind": "reworded_fact", "meta": meta}


def _samples(docs, n, seed, length, task, tokens_per_word, depth=None) -> list[dict]:
    kind = "single_fact" if task == "reworded_fact" else task
    samples = make_qa_samples(docs, n, seed, length, kinds=[kind], tokens_per_word=tokens_per_word, depth=depth)
    return [reword_fact(s, m) for m, s in enumerate(samples)] if task == "reworded_fact" else samples


def _cell(task, length, depths, n, tokens_per_word, docs, seed) -> list[EvalItem]:
    if task not in DEPTH_TASKS:
        samples = _samples(docs, n, seed, length, task, tokens_per_word)
        return [_item_from_sample(task, length, f"{task}/{format_length(length)}/{m}", s) for m, s in enumerate(samples)]
    per_depth = max(1, math.ceil(n / len(depths)))
    out = []
    for depth in depths:
        samples = _samples(docs, per_depth, seed, length, task, tokens_per_word, depth)
        out += [_item_from_sample(task, length, f"{task}/{format_length(length)}/d{depth:g}/{m}", s)
                for m, s in enumerate(samples)]
    return out


# ----------------------------------------------------------------------------- datasets


def _approx_tokens(text: str) -> int:
    return round(1.3 * len(text.split()))


def load_dataset(path: str | Path, *, metric: str = "auto", max_items: Optional[int] = None,
                 count_tokens: Callable[[str], int] = _approx_tokens) -> list[EvalItem]:
    """Items from a LongBench / LongBench v2 / RULER-style JSONL file.

    metric "auto": multiple choice when the record has choices, ROUGE-L when it has no
    question (summarisation; asked as "Summarize the document."), else token F1.
    A bad record raises ``DataError`` naming the file and line.
    """
    path = Path(path)
    if metric != "auto" and metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose auto or one of {', '.join(METRICS)}")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path} is a folder; pass a .jsonl file")
    items: list[EvalItem] = []
    seen: set[str] = set()
    try:
        for line, record in iter_jsonl_records(path):  # streamed: --max-items stops reading early
            item = _record_item(record, f"{path}:{line}", path, line, metric, count_tokens)
            if item.item_id in seen:
                item.item_id = f"{item.item_id}#L{line}"
            seen.add(item.item_id)
            items.append(item)
            if max_items is not None and len(items) >= max_items:
                break
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if not items:
        raise InputError(f"{path}: no records (expected one JSON object per line)")
    return items


def _text_field(record: dict, keys: Sequence[str]) -> Optional[str]:
    for key in keys:
        value = record.get(key)
        if value is not None:
            return value
    return None


def _record_item(record: object, where: str, path: Path, line: int, metric: str,
                 count_tokens: Callable[[str], int]) -> EvalItem:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with context, question/input and answers")
    context = record.get("context")
    if not isinstance(context, str) or not context.strip():
        raise DataError(f"{where}: field 'context' must be a non-empty string")
    question = _text_field(record, ("input", "question")) or ""
    if not isinstance(question, str):
        raise DataError(f"{where}: field 'input'/'question' must be a string")
    answers = _answers(record, where)
    choices = _choices(record, where)
    task = str(_text_field(record, ("dataset", "task")) or path.stem)
    given_id = _text_field(record, ("_id", "id", "index"))
    item_id = f"line{line}" if given_id in (None, "") else str(given_id)
    answer_index, letters = None, False
    if choices:
        answer_index = _answer_index(answers, choices, where)
        answers = [LETTERS[answer_index], choices[answer_index]]
        listed = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
        question = f"{question.strip()}\n\n{listed}\n{MC_SUFFIX}".strip()
        letters = True
    chosen = metric
    if metric == "auto":
        chosen = "choice" if choices else ("f1" if question.strip() else "rougeL")
    elif metric == "choice" and not choices:
        raise DataError(f"{where}: --metric choice needs choices (choices or choice_A..choice_D)")
    if not question.strip():
        question = SUMMARY_QUESTION
    tokens = count_tokens(context)
    return EvalItem(task, length_bucket(tokens), f"{task}:{item_id}", context, question, answers, chosen, choices,
                    answer_index, letters, None, path.name, {"line": line, "context_tokens": tokens})


def _answers(record: dict, where: str) -> list[str]:
    value = _text_field(record, ("answers", "answer", "outputs"))
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, (str, int)) for v in value):
        raise DataError(f"{where}: needs 'answers' (a list of strings) or 'answer' (a string)")
    return [str(v) for v in value]


def _choices(record: dict, where: str) -> Optional[list[str]]:
    value = record.get("choices")
    if value is None:
        letters = [f"choice_{letter}" for letter in LETTERS if f"choice_{letter}" in record]
        value = [record[key] for key in letters] if letters else None
    elif isinstance(value, dict):
        value = [value[k] for k in sorted(value)]
    if value is None:
        return None
    if not isinstance(value, list) or len(value) < 2 or len(value) > len(LETTERS) or \
            not all(isinstance(c, str) and c.strip() for c in value):
        raise DataError(f"{where}: choices must be 2 to {len(LETTERS)} non-empty strings")
    return value


def _answer_index(answers: list[str], choices: list[str], where: str) -> int:
    answer = answers[0].strip()
    m = re.fullmatch(r"\(?([A-J])\)?\.?", answer)
    if m and LETTERS.index(m.group(1)) < len(choices):
        return LETTERS.index(m.group(1))
    for i, choice in enumerate(choices):
        if choice.strip() == answer:
            return i
    if answer.isdigit() and int(answer) < len(choices):
        return int(answer)
    raise DataError(f"{where}: the answer {answer!r} is not a choice letter, index or choice text")


def rebucket(items: Sequence[EvalItem], count_tokens: Callable[[str], int]) -> None:
    """Measure real-data contexts with the decoder's tokenizer and regroup them by length."""
    for item in items:
        tokens = count_tokens(item.context)
        item.length, item.meta["context_tokens"] = length_bucket(tokens), tokens
