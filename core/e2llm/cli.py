"""Command line: ``e2llm ask | info | bench | train | eval``.

User errors (bad files, bad configs, documents that do not fit) print one line and exit 2;
a traceback from here means a bug in e2llm.
"""
from __future__ import annotations

import argparse
import sys

from .cli_common import add_model_args, load_from_args, quiet_libraries, read_text_file
from .errors import E2LLMError, InputError

EXIT_USAGE = 2


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
        if result.raw_only:  # beyond soft_prompts_max_tokens the ranker reads everything, the decoder the top chunks
            how = (f"{result.context_tokens} document tokens ranked, the {len(result.raw_chunks)} most similar chunks "
                   f"read as text in {result.prompt_tokens} prompt tokens (no soft prompts beyond "
                   f"soft_prompts_max_tokens={engine.config.soft_prompts_max_tokens})")
        else:
            how = (f"{result.context_tokens} document tokens as {result.soft_tokens} soft tokens + "
                   f"{result.prompt_tokens} prompt tokens; {result.dropped_chunks} chunks dropped")
        print(f"[{how}; {result.new_tokens} new tokens]", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    engine = load_from_args(args)
    counts = engine.num_parameters()
    print(engine.config.to_json())
    print(f"parameters: {counts['total']:,} total, {counts['trainable']:,} trainable")
    print(f"decoder window: {engine.window_tokens} tokens; trained checkpoint: {engine.config.trained}")
    for f in args.context or []:
        chunks = engine.chunk(read_text_file(f))
        tokens = sum(c.num_tokens for c in chunks)
        soft = len(chunks) * engine.config.adapter.tokens_per_chunk
        print(f"{f}: {tokens} encoder tokens -> {len(chunks)} chunks -> {soft} soft tokens "
              f"(compression {tokens / max(1, soft):.1f}x)")
    return 0


def build_parser() -> argparse.ArgumentParser:
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

    info = sub.add_parser("info", help="config, parameter counts and compression ratio")
    info.add_argument("--context", nargs="*", metavar="FILE", help="documents to report the compression of")
    add_model_args(info)
    info.set_defaults(func=cmd_info)

    from .bench import add_bench_parser
    from .eval.cli import add_parser as add_eval_parser
    from .train.cli import add_parser as add_train_parser
    from .train.validate import add_parser as add_validate_parser

    add_bench_parser(sub)
    add_train_parser(sub)
    add_eval_parser(sub)
    add_validate_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return args.func(args) or 0
    except E2LLMError as e:
        print(f"e2llm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("e2llm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
