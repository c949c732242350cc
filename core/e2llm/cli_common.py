"""What every ``e2llm`` subcommand shares: reading text files, the model options, loading.

Subcommand modules (bench, eval, train, validate) import from here and never from
:mod:`e2llm.cli`, which imports them: the dependency runs one way.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import get_args

from .config import Quantization
from .errors import ContextTooLongError, E2LLMError, InputError

DTYPES = ("float32", "bfloat16", "float16")
QUANTIZATIONS = get_args(Quantization)  # the config's choices (config.py imports no torch: --help stays quick)


def read_text_file(path: str) -> str:
    """A UTF-8 text file, or an InputError that names the problem and the fix."""
    p = Path(path)
    if path == "-":
        data = sys.stdin.buffer.read()
        name = "standard input"
    else:
        if not p.exists():
            raise InputError(f"{path}: no such file")
        if p.is_dir():
            raise InputError(f"{path} is a folder; pass the text files inside it")
        data = p.read_bytes()
        name = path
    if b"\x00" in data[:65536]:
        raise InputError(f"{name} looks binary (it holds NUL bytes); pass a text file (convert PDFs or documents to text first)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{name} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         f"convert it first, e.g. iconv -f latin1 -t utf-8") from None


def quiet_libraries() -> None:
    """transformers' warnings and progress bars off. Importing transformers costs about half a
    second, so it is not imported for this: the environment says it for a later import, and
    load_engine calls this again once the model's imports have run."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="peft")


# The documented size limit (README "Limitations"), checked on characters before any model loads.
# The engine's own check counts tokens after chunking (GenerationMixin._check_size): a context of
# more chunks than the decoder window holds as soft tokens. Here no tokenizer is loaded yet, so a
# document is refused only if it is longer than that many chunks could be at MAX_CHARS_PER_TOKEN
# characters a token (Python's documentation runs 3.6 on the default encoder's tokenizer, English
# prose 4-5, so nothing that would fit is refused; what passes here and does not fit is refused by
# the engine after chunking, 14 s for 2.6 MB on a busy 2-core host).
MAX_CHARS_PER_TOKEN = 8
DEFAULT_DECODER_WINDOW = 8192  # SmolLM2-135M's context (the engine reads it from the model itself)


def max_document_chars(checkpoint: str) -> int | None:
    """The character bound for this checkpoint's decoder window, or None where it cannot be told
    without loading the model (a decoder other than the default and no max_window_tokens)."""
    from . import defaults
    from .config import E2LLMConfig

    path = defaults.SHIPPED_CHECKPOINT if str(checkpoint) == "default" else Path(checkpoint)
    try:
        cfg = E2LLMConfig.from_json((path / "config.json").read_text(), str(path))
    except (OSError, E2LLMError):
        return None  # loading will report it properly
    window = cfg.decoder.max_window_tokens or (DEFAULT_DECODER_WINDOW if cfg.decoder.name_or_path == "default" else None)
    if window is None:
        return None
    return window // cfg.adapter.tokens_per_chunk * cfg.chunking.tokens_per_chunk * MAX_CHARS_PER_TOKEN


def check_document_size(names: list[str], docs: list[str], checkpoint: str) -> None:
    limit = max_document_chars(checkpoint)
    chars = sum(len(d) for d in docs)
    if limit is None or chars <= limit:
        return
    what = names[0] if len(names) == 1 else f"the {len(names)} documents together"
    raise ContextTooLongError(
        f"{what} has {chars:,} characters, more than e2llm reads: the decoder window holds about 400K tokens of "
        f"document (README \"Limitations\"), at most {limit:,} characters even at {MAX_CHARS_PER_TOKEN} a token; "
        f"split the document, or pass --overflow truncate to read only the chunks most similar to the question")


def add_model_args(sp, checkpoint: bool = True) -> None:
    """--checkpoint, --device, --dtype, --quantize: the same options on every command that loads a model."""
    if checkpoint:
        sp.add_argument("--checkpoint", default="default", help="checkpoint folder, or 'default' (the shipped one)")
    sp.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: cpu)")
    sp.add_argument("--dtype", default="float32", choices=DTYPES, help="backbone precision")
    sp.add_argument("--quantize", default=None, choices=QUANTIZATIONS,
                    help="the decoder's base weights: 4bit (NF4, needs CUDA and bitsandbytes) or none "
                         "(default: what the checkpoint was trained with)")
    sp.add_argument("--cache-dir", default=None, help="folder of an on-disk store of chunk encodings shared across runs "
                                                     "(keyed by content and checkpoint; default: none)")
    sp.add_argument("--cache-max-mb", type=float, default=None, metavar="MB",
                    help="size limit of the --cache-dir store; the least recently used encodings go first (default: 1024)")


def load_engine(checkpoint: str, device: str | None = None, dtype: str = "float32", cache_dir: str | None = None,
                quantization: str | None = None, cache_max_mb: float | None = None):
    """E2LLM.from_pretrained, with the 'untrained adapter' warning turned into a note on stderr."""
    from .model import E2LLM

    quiet_libraries()  # transformers is imported now: its progress bars off before the weights load
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = E2LLM.from_pretrained(checkpoint, dtype=dtype, device=device, quantization=quantization)
    for w in caught:
        if "trained" in str(w.message):
            print(f"e2llm: note: {w.message}", file=sys.stderr)
    if cache_dir:
        from .store import DEFAULT_MAX_BYTES, EncodingStore

        engine.store = EncodingStore(cache_dir, DEFAULT_MAX_BYTES if cache_max_mb is None else int(cache_max_mb * 2**20))
    return engine


def load_from_args(args):
    if getattr(args, "cache_max_mb", None) is not None and args.cache_max_mb <= 0:  # before loading
        raise InputError(f"--cache-max-mb must be > 0, got {args.cache_max_mb:g}; leave it out for 1024")
    return load_engine(args.checkpoint, getattr(args, "device", None), args.dtype, getattr(args, "cache_dir", None),
                       getattr(args, "quantize", None), getattr(args, "cache_max_mb", None))
