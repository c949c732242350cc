#!/usr/bin/env bash
# Issue 32, step 7: a QA-trained candidate side by side with the shipped default, as the issue
# asks, on text unlike the training corpus (runs/machine-docs: Debian licences, changelogs and
# package descriptions; docs/defaults.md makes it). Every run resumes where it stopped.
#   bash scripts/research/i32_qa_compare.sh CANDIDATE_CHECKPOINT [OUT_PREFIX]
# 1. compressed-only single facts at 2K-4K (n = 30 a length) against the no-context floor;
# 2. hybrid vs its two controls (the same raw chunks alone; another document's soft prompts)
#    on two-chunk and aggregation questions at 16K-64K (n = 30 a task), soft prompts at every
#    length for the candidate (the default reads raw chunks only beyond 8K, as shipped);
# 3. "real" questions: a word the text states once, asked as the blank of its own sentence
#    (real_fact), and questions the document cannot answer (unanswerable), at 512 and 2K tokens,
#    against the plain instruct decoder given the whole text (full) and RAG top-3 (rag).
set -euo pipefail
cand=${1:?candidate checkpoint folder}
out=${2:-runs/i32-compare}
docs=runs/machine-docs
common=(--docs "$docs" --threads "${THREADS:-2}" --no-progress --max-new-tokens 24)
e2llm eval --checkpoint "$cand" --checkpoint default "${common[@]}" --output "$out-compressed" \
    --tasks single_fact --lengths 2K 4K --depths 0.25 0.5 0.75 --items 30 --systems e2llm none
# (2026-12-07 these ran with ITEMS_2K=15 and ITEMS_LONG=5 to fit the session: n = 15 a cell)
e2llm eval --checkpoint "$cand" --checkpoint default "${common[@]}" --output "$out-real" \
    --tasks real_fact unanswerable --lengths 512 --items 30 --systems e2llm_hybrid e2llm rag full
e2llm eval --checkpoint "$cand" --checkpoint default "${common[@]}" --output "$out-real2k" \
    --tasks real_fact unanswerable --lengths 2K --items "${ITEMS_2K:-30}" --systems e2llm_hybrid e2llm rag full
e2llm eval --checkpoint "$cand" "${common[@]}" --output "$out-controls" \
    --tasks two_chunk aggregation --lengths 16K 32K 64K --items "${ITEMS_LONG:-10}" --systems e2llm_hybrid e2llm_raw e2llm_swapped
