"""Running every (item, checkpoint, system), resumably.

Each result is one JSON line in ``DIR/items.jsonl``, keyed by (task, length, system,
item id, checkpoint label). A restarted run skips the keys already there, unless the
item's text or the settings that shape the answer changed (``item_hash``, ``settings``):
those lines are ignored. A line cut short by a kill is reported once (a warning) and dropped from the file.

Checkpoint labels are ``k<adapter.tokens_per_chunk>`` (``k4``, then ``k4-2`` for a second
checkpoint with the same k). With the baseline LoRA off and one decoder for all
checkpoints, ``full`` and ``none`` do not depend on the checkpoint: they run once, labelled
``base``. ``rag`` and ``rag_hybrid_budget`` always run per checkpoint (their budgets follow
that checkpoint's e2llm).
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .metrics import all_scores, score
from .systems import (E2LLM_SYSTEMS, NEEDS_OTHER_SOFT, NEEDS_RETRIEVAL, SYSTEMS, USES_RAW_TOP_N, Outcome, SystemSettings, hybrid_raw_top_n,
                      prepare_item, run_system)
from .tasks import EvalItem

ITEMS_FILE = "items.jsonl"
BASE_LABEL = "base"
SHARED_BASELINES = frozenset({"full", "none"})

Key = tuple[str, int, str, str, str]  # task, length, system, item id, checkpoint label


@dataclass
class Checkpoint:
    label: str
    engine: Any  # E2LLM
    source: str  # the path given, or "default"
    identity: str = ""  # checkpoint_identity(source); filled in when empty

    def __post_init__(self):
        self.identity = self.identity or checkpoint_identity(self.source)


def checkpoint_identity(name_or_path: str) -> str:
    """Where a checkpoint's weights are and which version (size, mtime): results computed
    with other weights at the same path are not reused."""
    from ..checkpoint import WEIGHTS_NAME
    from ..defaults import SHIPPED_CHECKPOINT

    folder = SHIPPED_CHECKPOINT if str(name_or_path) == "default" else Path(name_or_path)
    weights = folder / WEIGHTS_NAME
    if not weights.exists():
        return f"{name_or_path} (untrained)"
    stat = weights.stat()
    return f"{folder.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def checkpoint_labels(engines: Sequence[Any]) -> list[str]:
    labels: list[str] = []
    for engine in engines:
        base = f"k{engine.config.adapter.tokens_per_chunk}"
        label, n = base, 1
        while label in labels:
            n += 1
            label = f"{base}-{n}"
        labels.append(label)
    return labels


def row_key(row: dict) -> Key:
    return (str(row["task"]), int(row["length"]), str(row["system"]), str(row["item_id"]), str(row["checkpoint"]))


class ResultStore:
    """The append-only JSONL of finished results; a truncated or garbled line is skipped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows: dict[Key, dict] = {}
        self.bad_lines = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with open(self.path, "rb") as file:
            for number, raw in enumerate(file, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw.decode("utf-8"))
                    key = row_key(row)
                except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                    self.bad_lines += 1
                    warnings.warn(f"{self.path}:{number}: unreadable result line (cut short by a kill?); "
                                  "it is ignored and that item runs again", stacklevel=2)
                    continue
                self.rows[key] = row
        if self.bad_lines:
            self._rewrite()

    def _rewrite(self) -> None:
        """Drop the unreadable lines (atomically), so they are reported once, not on every run."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as file:
            for row in self.rows.values():
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.path)

    def get(self, key: Key) -> Optional[dict]:
        return self.rows.get(key)

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with open(self.path, "ab+") as file:
            file.seek(0, os.SEEK_END)
            if file.tell():  # a previous run killed mid-line left no newline: start a fresh line
                file.seek(-1, os.SEEK_END)
                if file.read(1) != b"\n":
                    line = "\n" + line
            file.write(line.encode("utf-8"))
            file.flush()
            os.fsync(file.fileno())
        self.rows[row_key(row)] = row


def plan_jobs(checkpoints: Sequence[Checkpoint], systems: Sequence[str], settings: SystemSettings) -> list[tuple[Checkpoint, str, str]]:
    """(checkpoint, system, label) for one item, e2llm systems first."""
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}")
    ordered = [s for s in SYSTEMS if s in systems]
    decoders = {ck.engine.config.decoder.name_or_path for ck in checkpoints}
    share = not settings.baseline_lora and len(decoders) == 1
    jobs = []
    for n, ck in enumerate(checkpoints):
        for system in ordered:
            if share and system in SHARED_BASELINES:
                if n == 0:
                    jobs.append((ck, system, BASE_LABEL))
            else:
                jobs.append((ck, system, ck.label))
    return jobs


def settings_signature(system: str, ck: Checkpoint, label: str, settings: SystemSettings) -> str:
    """What shapes this system's answer, hashed: a change makes cached results stale."""
    parts: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens}
    if system in USES_RAW_TOP_N:
        parts["raw_top_n"] = hybrid_raw_top_n(ck.engine, settings)
    if system not in E2LLM_SYSTEMS:
        parts["baseline_lora"] = settings.baseline_lora
    else:  # only when set: older caches stay valid
        for key in ("soft_prompts_max_tokens", "soft_prompts_min_tokens"):
            if getattr(ck.engine.config, key) is not None:
                parts[key] = getattr(ck.engine.config, key)
    if ck.engine.config.ranker_candidates is not None and system in NEEDS_RETRIEVAL:  # a BM25 first pass ranks
        parts["ranker_candidates"] = ck.engine.config.ranker_candidates
    if ck.engine.config.ranker != "encoder" and system in NEEDS_RETRIEVAL:
        parts["ranker"] = ck.engine.config.ranker
    parts["model"] = ck.engine.config.decoder.name_or_path if label == BASE_LABEL else ck.identity
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def make_row(item: EvalItem, system: str, label: str, signature: str, outcome: Outcome,
             context_tokens: int) -> dict:
    row: dict[str, Any] = {
        "task": item.task, "length": item.length, "system": system, "item_id": item.item_id, "checkpoint": label,
        "item_hash": item.content_hash, "settings": signature, "status": outcome.status, "metric": item.metric,
        "depth": item.depth, "source": item.source, "context_tokens": context_tokens,
    }
    out = asdict(outcome)
    out["decoder_tokens"] = outcome.decoder_tokens
    row.update(out)
    row["prediction"] = row.pop("text")
    row["answers"] = item.answers[:5]
    if outcome.status == "ok":
        row["score"] = score(item.metric, outcome.text, item.answers, item.choices, item.answer_index, item.letters)
        if item.metric != "choice":
            row["scores"] = all_scores(outcome.text, item.answers)
    else:
        row["score"] = None
    return row


def other_item(items: Sequence[EvalItem], index: int) -> EvalItem:
    """The item whose document ``e2llm_swapped`` reads as soft prompts for ``items[index]``:
    the next one of the same task and length (cyclic), else the next one of the same length,
    else the next one; a document that differs from this one's whenever the run has two."""
    item = items[index]
    rest = [items[(index + j) % len(items)] for j in range(1, len(items))]
    for same in (lambda o: o.task == item.task and o.length == item.length, lambda o: o.length == item.length,
                 lambda o: True):
        for other in rest:
            if same(other) and other.context != item.context:
                return other
    return item


def run_eval(checkpoints: Sequence[Checkpoint], items: Sequence[EvalItem], systems: Sequence[str],
             settings: SystemSettings, output_dir: str | Path, *, progress: bool = True) -> list[dict]:
    """Run what is not cached yet; return the rows of this run's items x systems, in order."""
    from tqdm import tqdm

    store = ResultStore(Path(output_dir) / ITEMS_FILE)
    jobs = plan_jobs(checkpoints, systems, settings)
    signatures = {(ck.label, system): settings_signature(system, ck, label, settings) for ck, system, label in jobs}

    def done(item: EvalItem, ck: Checkpoint, system: str, label: str) -> Optional[dict]:
        row = store.get((item.task, item.length, system, item.item_id, label))
        ok = row and row.get("item_hash") == item.content_hash and row.get("settings") == signatures[(ck.label, system)]
        return row if ok else None

    todo = sum(1 for item in items for ck, system, label in jobs if not done(item, ck, system, label))
    skipped = len(items) * len(jobs) - todo
    bar = tqdm(total=todo, desc="eval", unit="answer", disable=not progress, dynamic_ncols=True)
    if skipped and progress:
        bar.write(f"e2llm eval: {skipped} results already in {store.path}; running the other {todo}")
    rows: list[dict] = []
    for index, item in enumerate(items):
        context_tokens = item.meta.get("context_tokens")
        for ck in checkpoints:
            mine = [(system, label) for c, system, label in jobs if c is ck]
            pending = [(s, lab) for s, lab in mine if not done(item, ck, s, lab)]
            other = other_item(items, index).context if any(s in NEEDS_OTHER_SOFT for s, _ in pending) else None
            prepared = prepare_item(ck.engine, item.context, [s for s, _ in pending], other) if pending else None
            if pending and context_tokens is None:
                tok = ck.engine.decoder_tokenizer
                context_tokens = len(tok(item.context, add_special_tokens=False)["input_ids"])
                item.meta["context_tokens"] = context_tokens
            for system, label in mine:
                row = done(item, ck, system, label)
                if row is None:
                    bar.set_postfix_str(f"{item.task} {item.length} {system}", refresh=False)
                    outcome = run_system(ck.engine, system, item.question, item.context, prepared, settings, item.stop)
                    row = make_row(item, system, label, signatures[(ck.label, system)], outcome, context_tokens)
                    store.append(row)
                    bar.update(1)
                rows.append(row)
    bar.close()
    return rows


def iter_rows(path: str | Path) -> Iterable[dict]:
    """Every readable row of a results file (for reports over a finished run)."""
    return ResultStore(path).rows.values()
