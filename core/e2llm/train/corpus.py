"""Offline English corpus: text that ships with every Python install.

Training and evaluation data must be buildable on a machine with no network, so the
built-in corpus is made only of text that Python itself carries:

1. ``pydoc_data.topics``: the language-reference sections that ``help()`` shows;
2. docstrings of the standard library, read with ``ast`` from the source files, so no
   module is ever imported (importing ``antigravity`` opens a browser, ``this`` prints,
   ``turtle`` may open a window) and GUI modules are safe to read; C modules, which have
   no source, are imported by name from ``sys.stdlib_module_names``;
3. optionally, English man pages (off by default: they differ between machines, so a
   corpus that includes them cannot be rebuilt identically elsewhere).

The corpus depends on the Python version (docstrings change between releases); store
``corpus_fingerprint(docs)`` next to anything built from it.

User-supplied corpora (folders of .txt/.md, JSONL with a ``text`` field) are read by
``iter_text_files``, which names the file and line of anything it cannot read.
"""
from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import importlib
import inspect
import json
import os
import re
import sys
import sysconfig
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Union

from ..errors import InputError

OnError = Literal["raise", "skip"]
PathLike = Union[str, "os.PathLike[str]"]

MIN_DOC_CHARS = 200
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"

# Never read: jokes, test suites (absent on many distributions), third-party packages.
_SKIPPED_MODULE_PARTS = frozenset({
    "antigravity", "this", "test", "tests", "idle_test", "site-packages", "dist-packages",
    "__pycache__", "__phello__", "pydoc_data",
})
# C modules without source whose import has visible side effects (readline may write
# terminal escape codes) or that belong to the skipped GUI stack.
_SKIPPED_C_MODULES = frozenset({"readline", "_tkinter", "_curses", "_curses_panel"})
# Private C modules that hold the documentation of public APIs (io, collections, csv, ...).
_DOCUMENTED_PRIVATE_C_MODULES = frozenset({
    "_collections", "_csv", "_functools", "_io", "_socket", "_sqlite3", "_struct", "_thread",
})

_RULE_LINE = re.compile(r"^[ \t]*[*=~^\-]{3,}[ \t]*$", re.MULTILINE)
_INLINE_SPACE = re.compile(r"[^\S\n]+")


@dataclass(frozen=True)
class Document:
    """One text of the corpus; ``doc_id`` is stable across runs and machines."""

    doc_id: str
    title: str
    text: str
    source: str

    @property
    def num_words(self) -> int:
        return len(self.text.split())


class DataError(InputError):
    """A data file cannot be used; the message names the file (and line) and the problem."""


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def report_data_error(message: str, on_error: OnError) -> None:
    """Raise ``DataError(message)``, or warn with it so the caller can skip the item."""
    check_on_error(on_error)
    if on_error == "raise":
        raise DataError(message)
    warnings.warn(f"skipped: {message}", stacklevel=3)


def clean_text(text: str) -> str:
    """Collapse whitespace inside lines, keep one blank line between paragraphs.

    Line breaks inside a paragraph are kept so code examples stay readable; runs of blank
    lines become exactly one, which is what the chunker and the QA generator split on.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        line = _INLINE_SPACE.sub(" ", line).strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return "\n\n".join(paragraphs)


def count_words(docs: Iterable[Document]) -> int:
    return sum(doc.num_words for doc in docs)


def corpus_fingerprint(docs: Iterable[Document]) -> str:
    """Short hash of ids and texts: two corpora with the same fingerprint are identical."""
    digest = hashlib.sha256()
    for doc in docs:
        digest.update(doc.doc_id.encode() + b"\0" + doc.text.encode() + b"\0")
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- built-in


def load_corpus(
    include_man_pages: bool = False,
    man_dir: str = "/usr/share/man",
    man_sections: tuple[str, ...] = ("1", "5", "7", "8"),
    min_chars: int = MIN_DOC_CHARS,
) -> list[Document]:
    """The built-in corpus in a fixed order: topics, then modules, then man pages.

    Cached, because parsing the standard library takes a few seconds; a fresh list is
    returned each call so callers may sort or filter it without touching the cache.
    """
    return list(_load_corpus_cached(include_man_pages, man_dir, tuple(man_sections), min_chars))


@functools.lru_cache(maxsize=4)
def _load_corpus_cached(
    include_man_pages: bool, man_dir: str, man_sections: tuple[str, ...], min_chars: int
) -> tuple[Document, ...]:
    docs = _topic_documents() + _module_documents()
    if include_man_pages and os.path.isdir(man_dir):
        docs += _man_documents(Path(man_dir), man_sections)
    return tuple(_unique_titles([doc for doc in docs if len(doc.text) >= min_chars]))


def _unique_titles(docs: list[Document]) -> list[Document]:
    """Titles are the answers of topic questions, so two documents must not share one."""
    seen: set[str] = set()
    unique = []
    for doc in docs:
        title = doc.title if doc.title not in seen else f"{doc.title} ({doc.doc_id})"
        seen.add(title)
        unique.append(doc if title == doc.title else Document(doc.doc_id, title, doc.text, doc.source))
    return unique


def _topic_documents() -> list[Document]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data into another package
        return []
    docs, seen_texts = [], set()
    for key in sorted(topics):
        text = clean_text(_RULE_LINE.sub("", topics[key]))
        if not text or text in seen_texts:  # "if" and "else" share one section
            continue
        seen_texts.add(text)
        heading = text.split("\n", 1)[0]
        title = heading if len(heading) <= 80 else key
        docs.append(Document(f"topic:{key}", title, text, "pydoc_topics"))
    return docs


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths().get("stdlib") or os.path.dirname(os.__file__))


def _module_documents() -> list[Document]:
    """One document per module, sorted by module name."""
    docs = _source_module_documents() + _c_module_documents()
    return sorted(docs, key=lambda doc: doc.title)


def _source_module_documents() -> list[Document]:
    docs = []
    root = _stdlib_dir()
    for path in _stdlib_sources(root):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        text = _docstrings_from_source(path)
        if name and text:
            docs.append(Document(f"module:{name}", name, text, "stdlib_docstrings"))
    return docs


def _c_module_documents() -> list[Document]:
    """Modules compiled from C: no source to parse, so they are imported (import-safe)."""
    docs = []
    root = _stdlib_dir()
    for name in sorted(getattr(sys, "stdlib_module_names", ())):
        if name in _SKIPPED_C_MODULES or name in _SKIPPED_MODULE_PARTS:
            continue
        if name.startswith("_") and name not in _DOCUMENTED_PRIVATE_C_MODULES:
            continue
        if (root / f"{name}.py").exists() or (root / name).is_dir():
            continue  # has source: read by _source_module_documents, or deliberately skipped
        text = _docstrings_from_c_module(name)
        if text:
            docs.append(Document(f"module:{name}", name, text, "stdlib_docstrings"))
    return docs


def _stdlib_sources(root: Path) -> Iterator[Path]:
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(
            d for d in subfolders if d not in _SKIPPED_MODULE_PARTS and "-" not in d and "." not in d
        )
        for file in sorted(files):
            if file.endswith(".py") and file[:-3] not in _SKIPPED_MODULE_PARTS:
                yield Path(folder) / file


def _docstrings_from_source(path: Path) -> str:
    """Module, class and function docstrings in source order, each under its name.

    Private helpers are kept: their docstrings are English prose like any other.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escape sequences in old files
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return ""
    parts = [ast.get_docstring(tree) or ""]

    def visit(body: list[ast.stmt], prefix: str, depth: int) -> None:
        for node in body:
            if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if doc:
                parts.append(f"{prefix}{node.name}\n{doc}")
            if isinstance(node, ast.ClassDef) and depth < 2:
                visit(node.body, f"{prefix}{node.name}.", depth + 1)

    visit(tree.body, "", 0)
    return clean_text("\n\n".join(p for p in parts if p))


def _docstrings_from_c_module(name: str) -> str:
    """Docstrings of a C module's classes and functions.

    Module attributes are live state: a test runner or debugger may have replaced
    ``sys.excepthook`` and friends. The original (``sys.__excepthook__``) is used where
    one exists and anything defined outside the standard library is left out, so the
    text does not depend on what ran before.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "deprecated and slated for removal" modules
            module = importlib.import_module(name)
    except Exception:  # not built on this platform, or broken: just leave it out
        return ""
    parts, seen = [inspect.cleandoc(module.__doc__ or "")], set()
    stdlib_names = getattr(sys, "stdlib_module_names", frozenset())

    def visit(owner: object, prefix: str, depth: int) -> None:
        for attr, value in sorted(vars(owner).items()):
            if inspect.ismodule(owner):
                value = vars(owner).get(f"__{attr}__", value)
            if attr.startswith("_") or not (inspect.isclass(value) or inspect.isroutine(value)):
                continue
            origin = getattr(value, "__module__", None)
            if isinstance(origin, str) and origin.split(".")[0] not in stdlib_names:
                continue
            doc = getattr(value, "__doc__", None)
            if isinstance(doc, str) and doc.strip() and doc not in seen:
                seen.add(doc)
                parts.append(f"{prefix}{attr}\n{inspect.cleandoc(doc)}")
            if inspect.isclass(value) and depth < 1:
                visit(value, f"{prefix}{attr}.", depth + 1)

    try:
        visit(module, "", 0)
    except Exception:
        pass
    return clean_text("\n\n".join(p for p in parts if p))


# ---------------------------------------------------------------------------- man pages

_TROFF_FONT = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)")
_TROFF_STRING = re.compile(r"\\\*(?:\(..|\[[^\]]*\]|.)")
_TROFF_SIZE = re.compile(r"\\s[-+]?\d+")
_TROFF_SPECIAL = re.compile(r"\\(?:\((..)|\[([^\]]*)\])")
_TROFF_CHARS = {"em": "\u2014", "en": "\u2013", "aq": "'", "dq": '"', "lq": '"', "rq": '"',
                "oq": "'", "cq": "'", "bu": "*", "co": "(c)", "hy": "-", "mi": "-", "ti": "~",
                "ha": "^", "rs": "\\", "at": "@", "sl": "/", "pl": "+", "eq": "=", "ga": "`"}
_TROFF_OTHER = re.compile(r"\\(.)")
_TROFF_BREAKS = frozenset({"PP", "P", "LP", "TP", "IP", "HP", "sp", "br", "RS", "RE", "Pp", "Sh", "Ss"})
_TROFF_TEXT_MACROS = frozenset({"B", "I", "SM", "SB", "BR", "BI", "IB", "IR", "RB", "RI", "SH", "SS"})


def troff_to_text(source: str) -> str:
    """Good-enough plain text of a man page, without calling groff (may be missing)."""
    lines: list[str] = []
    in_macro_definition = False
    for line in source.splitlines():
        if in_macro_definition:
            in_macro_definition = not line.startswith("..")
            continue
        if line.startswith((".", "'")):
            request, _, args = line[1:].strip().partition(" ")
            if request in ("de", "de1", "am"):
                in_macro_definition = True
            elif request in ("SH", "SS", "Sh", "Ss"):
                lines += ["", _troff_inline(args.replace('"', "")), ""]
            elif request in _TROFF_BREAKS:
                lines.append("")
                if request == "IP" and args:
                    lines.append(_troff_inline(args.split('"')[1] if args.startswith('"') else args.split()[0]))
            elif request in _TROFF_TEXT_MACROS:
                joiner = "" if len(request) == 2 and request not in ("SM", "SB") else " "
                lines.append(_troff_inline(joiner.join(args.replace('"', " ").split())))
            continue
        if not line.startswith(("\\\"", "\\}")):
            lines.append(_troff_inline(line))
    return "\n".join(lines)


def _troff_inline(text: str) -> str:
    text = text.split('\\"', 1)[0]  # trailing comment
    text = _TROFF_FONT.sub("", text)
    text = _TROFF_STRING.sub("", text)
    text = _TROFF_SIZE.sub("", text)
    text = _TROFF_SPECIAL.sub(lambda m: _TROFF_CHARS.get(m.group(1) or m.group(2), ""), text)
    text = text.replace("\\-", "-").replace("\\e", "\\").replace("\\~", " ").replace("\\ ", " ")
    return _TROFF_OTHER.sub(lambda m: "" if m.group(1) in "&|^%:c{}" else m.group(1), text)


def _man_documents(man_dir: Path, sections: tuple[str, ...]) -> list[Document]:
    docs = []
    for section_dir in sorted(man_dir.glob("man[1-9]")):
        if section_dir.name[3:] not in sections:
            continue
        for path in sorted(section_dir.iterdir()):
            if path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
                raw = (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")
            except (OSError, EOFError, zlib.error, UnicodeDecodeError):
                continue
            if raw.lstrip().startswith(".so "):  # alias of another page
                continue
            stem = path.name[:-3] if path.suffix == ".gz" else path.name
            name, _, section = stem.rpartition(".")
            title = f"{name}({section})" if name else stem
            docs.append(Document(f"man:{section_dir.name}/{stem}", title, clean_text(troff_to_text(raw)), "man"))
    return docs


# --------------------------------------------------------------------------- splitting


def split_documents(
    docs: Iterable[Document], seed: int, val_fraction: float
) -> tuple[list[Document], list[Document]]:
    """Split by a hash of (seed, doc_id): stable across runs, machines and corpus growth.

    A document's side never depends on the other documents, so adding man pages or a
    new Python version does not move existing documents between train and validation.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    train, val = [], []
    for doc in docs:
        digest = hashlib.sha256(f"{seed}\0{doc.doc_id}".encode()).digest()
        (val if int.from_bytes(digest[:8], "big") < val_fraction * 2**64 else train).append(doc)
    return train, val


# ------------------------------------------------------------------------ user corpora


def iter_text_files(
    paths: Union[PathLike, Iterable[PathLike]],
    on_error: OnError = "raise",
    min_chars: int = 1,
) -> Iterator[Document]:
    """Documents from folders (searched recursively) or files: .txt/.md, or JSONL lines.

    A .txt/.md file is one document; a JSONL line is one document with a string field
    ``text`` (optional ``title``). ``doc_id`` is the path relative to the given folder
    (plus ``:line`` for JSONL), so moving the folder keeps train/validation splits.
    Unreadable items raise ``DataError`` naming file and line, or with
    ``on_error="skip"`` are reported through ``warnings.warn`` and skipped.
    """
    check_on_error(on_error)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for given in paths:
        root = Path(given)
        if root.is_dir():
            files = sorted(
                p for p in root.rglob("*")
                if p.is_file() and p.suffix.lower() in (*TEXT_SUFFIXES, JSONL_SUFFIX)
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
            base = root
        elif root.is_file():
            if root.suffix.lower() not in (*TEXT_SUFFIXES, JSONL_SUFFIX):
                report_data_error(f"{root}: unsupported file type; expected .txt, .md or .jsonl", on_error)
                continue
            files, base = [root], root.parent
        else:
            report_data_error(f"{root}: no such file or folder", on_error)
            continue
        for path in files:
            name = path.relative_to(base).as_posix()
            if path.suffix.lower() == JSONL_SUFFIX:
                docs: Iterable[Document] = _jsonl_documents(path, name, on_error)
            else:
                docs = _text_document(path, name, on_error)
            yield from (doc for doc in docs if len(doc.text) >= max(min_chars, 1))


def _text_document(path: Path, name: str, on_error: OnError) -> list[Document]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        report_data_error(f"{path}:{line}: not valid UTF-8 (byte {error.start}); convert the file to UTF-8", on_error)
        return []
    return [Document(f"file:{name}", path.stem, clean_text(text), "file")]


def _jsonl_documents(path: Path, name: str, on_error: OnError) -> Iterator[Document]:
    for line_number, record in iter_jsonl_records(path, on_error):
        where = f"{path}:{line_number}"
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            report_data_error(f"{where}: expected a JSON object with a string field 'text'", on_error)
            continue
        title = record.get("title")
        title = title if isinstance(title, str) and title else f"{path.stem}:{line_number}"
        yield Document(f"file:{name}:{line_number}", title, clean_text(record["text"]), "file")


def iter_jsonl_records(path: PathLike, on_error: OnError = "raise") -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) for each non-blank line; bad lines name file and line."""
    check_on_error(on_error)
    with open(path, "rb") as file:
        for line_number, raw in enumerate(file, 1):
            if not raw.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                report_data_error(f"{where}: not valid UTF-8 (byte {error.start} of the line)", on_error)
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                report_data_error(f"{where}: invalid JSON ({error.msg} at column {error.colno})", on_error)
                continue
            yield line_number, record
