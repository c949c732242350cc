"""Command line: ``e2llm ask | info | bench | train | eval | validate``.

User errors (bad files, bad configs, documents that do not fit) print one line, in the words of
the command line (flags, not Python arguments), and exit 2; a traceback from here means a bug.

Start-up: this module, ``e2llm/__init__`` and ``cli_common`` import no torch or transformers,
and the bench/train/eval/validate parsers are imported only for the subcommand being run, so
``e2llm --help`` and input errors answer in well under a second.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .cli_common import add_model_args, check_document_size, load_from_args, quiet_libraries, read_text_file
from .errors import ContextTooLongError, E2LLMError, InputError

EXIT_USAGE = 2

# Subcommands whose parsers live in heavier modules: (module, help shown by ``e2llm --help``).
# Only the one being run is imported; tests/test_cli.py checks these helps match the real ones.
LAZY_SUBCOMMANDS = {
    "bench": ("e2llm.bench.cli", "benchmarks (printed side by side in one run)"),
    "train": ("e2llm.train.cli", "train the adapter and LoRAs (reconstruction + instruction tuning)"),
    "eval": ("e2llm.eval.cli", "accuracy / latency / memory of e2llm vs rag, full context and no context"),
    "validate": ("e2llm.train.validate", "held-out reconstruction: loss with vs without soft prompts, ROUGE-L"),
}


def cmd_ask(args) -> int:
    # every check that needs no model runs first: loading (on a first run, converting) takes a minute
    names = args.context or []
    if names:
        docs = [read_text_file(f) for f in names]
    elif not sys.stdin.isatty():
        names, docs = ["standard input"], [read_text_file("-")]
    else:
        raise InputError("no document: pass --context FILE (one or more) or pipe the text on standard input")
    for name, doc in zip(names, docs):
        if not doc.strip():
            raise InputError(f"{name} is empty or whitespace only; pass a document with text in it")
    if not args.question.strip():
        raise InputError("the question is empty; pass --question \"...\"")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}; leave it out for the checkpoint's default")
    if args.raw_top_n is not None and args.raw_top_n < 0:
        raise InputError(f"--raw-top-n must be >= 0 (0: compressed only), got {args.raw_top_n}; leave it out for the checkpoint's")
    if args.overflow == "error":
        check_document_size(names, docs, args.checkpoint)  # the documented limit, before a minute of loading
    engine = load_from_args(args)
    context = docs[0] if len(docs) == 1 else docs
    kwargs = dict(max_new_tokens=args.max_new_tokens, raw_top_n=args.raw_top_n, overflow=args.overflow)
    if args.stream:
        stream = engine.stream(args.question, context, **kwargs)
        for piece in stream:
            print(piece, end="", flush=True)
        print()
        result = stream.result
    else:
        result = engine.generate(args.question, context, return_result=True, **kwargs)
        print(result.text)
    if args.verbose:
        if result.raw_only:  # outside the soft-prompt lengths the ranker reads everything, the decoder the top chunks
            cfg = engine.config
            how = (f"{result.context_tokens} document tokens ranked, the {len(result.raw_chunks)} most similar chunks "
                   f"read as text in {result.prompt_tokens} prompt tokens (soft prompts are read only between "
                   f"soft_prompts_min_tokens={cfg.soft_prompts_min_tokens} and soft_prompts_max_tokens={cfg.soft_prompts_max_tokens})")
        else:
            how = (f"{result.context_tokens} document tokens as {result.soft_tokens} soft tokens + "
                   f"{result.prompt_tokens} prompt tokens; {result.dropped_chunks} chunks dropped")
        print(f"[{how}; {result.new_tokens} new tokens]", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    docs = [(f, read_text_file(f)) for f in args.context or []]  # a bad file fails before loading
    engine = load_from_args(args)
    counts = engine.num_parameters()
    print(engine.config.to_json())
    print(f"parameters: {counts['total']:,} total, {counts['trainable']:,} trainable")
    print(f"decoder window: {engine.window_tokens} tokens; trained checkpoint: {engine.config.trained}")
    import torch  # loaded with the engine already

    from .decoding import fast_dtype
    from .devices import cpu_line

    if engine.device.type == "cpu":  # which path each stage takes on this machine
        fast = engine._encoder_copy_pays()
        # the decoder's own rule (InferenceCopies), not the encoder's: autocast_encoder=False leaves decoding in bf16
        bf16 = fast_dtype(engine.device, next(engine.decoder.parameters()).dtype) == torch.bfloat16
        decoding = ("float32 (exact)" if not engine.fast_decode else "a bf16 lean copy" if bf16
                    else "a packed float32 lean copy")
        n = engine.config.ranker_candidates
        ranking = ("BM25 alone" if engine.config.ranker == "bm25" else
                   f"BM25 picks {n} candidate chunks, the encoder ranks them" if n else "the encoder ranks every chunk")
        print(f"{cpu_line()}; encoder passes: {'a bf16 copy' if fast else 'float32'}; decoding: {decoding}; "
              f"ranking: {ranking}")
    for f, text in docs:
        print(f"{f}: {reading_plan(engine, engine.chunk(text))}")
    return 0


def reading_plan(engine, chunks) -> str:
    """What ``e2llm ask`` with this checkpoint's defaults reads of a document of these chunks."""
    cfg = engine.config
    tokens = sum(c.num_tokens for c in chunks)
    head = f"{tokens} encoder tokens -> {len(chunks)} chunks"
    try:
        engine._check_size("?", chunks, cfg.prompt.max_new_tokens)
    except ContextTooLongError:
        return (f"{head}: beyond the decoder window, so e2llm ask refuses it (--overflow truncate reads only the "
                f"chunks most similar to the question)")
    raw = (f"the raw text of the {cfg.raw_top_n} chunks most similar to each question" if cfg.raw_top_n else "")
    if cfg.raw_top_n and cfg.soft_prompts_skipped(tokens):
        why = (f"longer than soft_prompts_max_tokens={cfg.soft_prompts_max_tokens}" if cfg.soft_prompts_max_tokens is not None
               and tokens > cfg.soft_prompts_max_tokens else f"at most soft_prompts_min_tokens={cfg.soft_prompts_min_tokens}")
        return f"{head}; read as {raw} alone, no soft prompts ({why}; every chunk is still ranked)"
    soft = len(chunks) * cfg.adapter.tokens_per_chunk
    return f"{head} -> {soft} soft tokens (compression {tokens / max(1, soft):.1f}x){' + ' + raw if raw else ''}"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand's parser; with ``only``, the heavy ones other than ``only`` as stubs."""
    p = argparse.ArgumentParser(prog="e2llm", description="Read whole long documents as compressed soft prompts (E2LLM).")
    sub = p.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a question about a document")
    ask.add_argument("--context", nargs="+", metavar="FILE", help="text file(s); each is its own document (default: stdin)")
    ask.add_argument("--question", "-q", required=True)
    ask.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                     help="new tokens at most (default: the checkpoint's prompt.max_new_tokens)")
    ask.add_argument("--raw-top-n", type=int, default=None, metavar="N",
                     help="also read the n chunks most similar to the question as raw text (hybrid; 0: compressed only; "
                          "default: the checkpoint's raw_top_n)")
    ask.add_argument("--overflow", choices=("error", "truncate"), default="error",
                     help="a document beyond the decoder window: fail naming what would fit (error), or keep the chunks "
                          "most similar to the question (truncate)")
    ask.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    ask.add_argument("--verbose", "-v", action="store_true", help="print token accounting to stderr")
    add_model_args(ask)
    ask.set_defaults(func=cmd_ask)

    info = sub.add_parser("info", help="config, parameter counts, and what ask reads of a document")
    info.add_argument("--context", nargs="*", metavar="FILE",
                      help="documents to report on: chunks, and soft tokens or raw text as ask would read them")
    add_model_args(info)
    info.set_defaults(func=cmd_info)

    for name, (module, help_) in LAZY_SUBCOMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).add_parser(sub)
        else:  # listed for --help and argparse's choices; never run (only the chosen one is parsed)
            sub.add_parser(name, help=help_)
    return p


def _subcommand(argv: list[str]) -> str | None:
    """The subcommand argparse will pick: the first argument that is not an option (the top-level
    parser has no option taking a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only=_subcommand(argv) or "")  # "": no subcommand, so no heavy parser is needed
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return args.func(args) or 0
    except E2LLMError as e:
        print(f"e2llm: error: {e.for_cli()}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("e2llm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
