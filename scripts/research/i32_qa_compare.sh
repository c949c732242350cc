#!/usr/bin/env bash
# Issue 32, step 7: a QA-trained candidate side by side with the shipped default, as the issue
# asks, on text unlike the training corpus (runs/machine-docs: Debian licences, changelogs and
# package descriptions; docs/defaults.md makes it). Every run resumes where it stopped.
#   bash scripts/research/i32_qa_compare.sh CANDIDATE_CHECKPOINT [OUT_PREFIX]
# 1. compressed-only single facts at 2K-4K (n = 30 a length) against the no-context floor;
# 2. hybrid vs its two controls (the same raw chunks alone; another document's soft prompts)
#    on two-chunk and aggregation questions at 16K-64K, soft prompts at every length for the
#    candidate (the default reads raw chunks only beyond 8K, as shipped);
# 3. real questions about real text (real_field: a changelog entry's signer or date, a package's
#    author or version, a copyright stanza's licence) and questions the document cannot answer
#    (unanswerable), at 512, 2K and 8K tokens with 64 new tokens, the settings of the default's
#    own runs in docs/defaults.md (runs/real-field64, runs/abstain-shipped), so its rows there are
#    the comparison. (The fourth session ran step 3 with real_fact, a cloze, at 512 and 2K, and
#    24 new tokens: git show d73d032:scripts/research/i32_qa_compare.sh.)
set -euo pipefail
cand=${1:?candidate checkpoint folder}
out=${2:-runs/i32-compare}
docs=runs/machine-docs
common=(--docs "$docs" --threads "${THREADS:-2}" --no-progress)
e2llm eval --checkpoint "$cand" --checkpoint default "${common[@]}" --max-new-tokens 24 --output "$out-compressed" \
    --tasks single_fact --lengths 2K 4K --depths 0.25 0.5 0.75 --items 30 --systems e2llm none
e2llm eval --checkpoint "$cand" "${common[@]}" --max-new-tokens 64 --output "$out-real-field" \
    --tasks real_field --lengths 512 2K 8K --items 30 --systems e2llm_hybrid e2llm e2llm_raw
e2llm eval --checkpoint "$cand" "${common[@]}" --max-new-tokens 64 --output "$out-abstain" \
    --tasks unanswerable --lengths 512 2K 8K --items 30 --systems e2llm_hybrid e2llm
e2llm eval --checkpoint "$cand" "${common[@]}" --max-new-tokens 24 --output "$out-controls" \
    --tasks two_chunk aggregation --lengths 16K 32K 64K --items "${ITEMS_LONG:-10}" --systems e2llm_hybrid e2llm_raw e2llm_swapped
