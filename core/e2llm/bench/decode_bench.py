"""``e2llm bench decode``: milliseconds a decoded token on each decode path, and whether the
fast (bf16) path's greedy answers agree with float32 on held-out items."""
from __future__ import annotations

import dataclasses

import torch

from .measure import QUESTION, _held_out_items, _StepClock, make_document


def _decode_paths(engine, merged) -> dict:
    """name -> run(spliced, settings) -> _StepClock, each decoding settings.max_new_tokens tokens
    (settings.min_new_tokens keeps an end of turn away before then)."""
    def hf(model):
        def run(spliced, s):
            clock = _StepClock()
            with torch.no_grad():
                model.generate(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, streamer=clock,
                               max_new_tokens=s.max_new_tokens, min_new_tokens=s.min_new_tokens, do_sample=False,
                               temperature=None, top_p=None, top_k=None, pad_token_id=s.pad_token_id, eos_token_id=s.eos_token_ids)
            return clock
        return run

    def ours(fast: bool, drafts: int):
        def run(spliced, s):
            engine.fast_decode, clock = fast, _StepClock()
            try:
                engine._run_generate(spliced, dataclasses.replace(s, draft_tokens=drafts), streamer=clock)
            finally:
                engine.fast_decode = True
            return clock
        return run

    return {"generate(), LoRA unmerged (previous path)": hf(engine._decoder_base),
            "generate(), same weights merged": hf(merged),
            "e2llm decode, float32 exact": ours(False, 0),
            "e2llm decode, fast, one token a pass": ours(True, 0),
            f"e2llm decode, fast + drafts from the prompt ({engine.draft_tokens} a pass, as shipped)": ours(True, engine.draft_tokens)}


def _merged_copy(engine):
    from ..decoding import build_inference_copy, is_quantized
    from ..errors import ConfigError

    if is_quantized(engine.decoder):  # the comparison is between full-precision copies of the decoder
        raise ConfigError("bench decode compares float32 and bf16 copies of the decoder, which a 4-bit decoder "
                          "cannot make; run it with --quantize none")
    return build_inference_copy(engine.decoder, True, next(engine.decoder.parameters()).dtype, pack=False)  # plain weights


def decode_speed(engine, document_tokens: int = 8192, new_tokens: int = 32, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """Milliseconds a decoded token (after the first), wall clock and process CPU time, median over interleaved rounds, for the
    same spliced e2llm prompt: the previous path (transformers' generate on the decoder with its
    LoRA unmerged), plain generate() on the same weights merged, and e2llm's decode loop exact
    (float32 decoder) and fast (merged copy, bf16 where the hardware has bf16 units), one token a
    pass and with drafts copied from the prompt. The answer is forced to new_tokens tokens (no
    early end of turn), so the model runs on past its answer: drafts hit less there than in answers."""
    import statistics

    paths = _decode_paths(engine, _merged_copy(engine))
    doc = make_document(engine.decoder_tokenizer, document_tokens)
    spliced = engine._splice([engine._prepare(QUESTION, doc, max_new_tokens=new_tokens)])
    settings = dataclasses.replace(engine._gen_kwargs(new_tokens, False, 1.0, 1.0, None), min_new_tokens=new_tokens)
    for run in paths.values():  # warm-up (builds the fast copy)
        run(spliced, settings)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, run in paths.items():
            clock = run(spliced, settings)
            times[name].append((clock.ms_per_token(), clock.ms_per_token(cpu=True)))
    return {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for name, ts in times.items()}




def answer_decode_speed(engine, items: int = 40, new_tokens: int = 32, length: int = 2048) -> tuple[dict[str, tuple[float, float]], int]:
    """The same paths on real answers: each held-out item is answered once (fast path, to its end
    of turn or stop string), then every path decodes that many tokens from that item's prompt.
    Returns wall and CPU ms a token after the first, over all items, and the tokens timed."""
    paths = _decode_paths(engine, _merged_copy(engine))
    totals = {name: [0.0, 0.0, 0] for name in paths}
    for i, item in enumerate(_held_out_items(items, length)):
        spliced = engine._splice([engine._prepare(item.question, item.context, max_new_tokens=new_tokens, overflow="truncate")])
        natural = engine._gen_kwargs(new_tokens, False, 1.0, 1.0, item.stop)
        n = len(paths["e2llm decode, fast, one token a pass"](spliced, natural).times)
        if n < 2:
            continue
        # the answer's length for every path: no end of turn before its last token, no stop strings
        fixed = dataclasses.replace(natural, max_new_tokens=n, min_new_tokens=n - 1, stop_strings=[])
        for name, run in paths.items():
            if i == 0:
                run(spliced, fixed)  # warm-up
            clock = run(spliced, fixed)
            totals[name][0] += clock.times[-1] - clock.times[0]
            totals[name][1] += clock.cpu_times[-1] - clock.cpu_times[0]
            totals[name][2] += len(clock.times) - 1
    tokens = totals["e2llm decode, fast, one token a pass"][2]
    return {name: (1000 * wall / max(1, k), 1000 * cpu / max(1, k)) for name, (wall, cpu, k) in totals.items()}, tokens


def decode_agreement(engine, items: int = 40, new_tokens: int = 32, length: int = 2048) -> tuple[int, int, list]:
    """Greedy answers of the fast decode path (bf16 where available) against float32 on held-out
    synthetic items: (identical, total, differing pairs)."""
    pool = _held_out_items(items, length)
    same, diffs = 0, []
    for item in pool:
        answers = []
        for fast in (False, True):
            engine.fast_decode = fast
            try:
                answers.append(engine.generate(item.question, item.context, max_new_tokens=new_tokens, stop=item.stop,
                                               overflow="truncate"))
            finally:
                engine.fast_decode = True
        same += answers[0] == answers[1]
        if answers[0] != answers[1]:
            diffs.append((item.item_id, *answers))
    return same, len(pool), diffs
