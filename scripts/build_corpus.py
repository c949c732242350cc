"""Build the varied reconstruction corpus (issue 32) offline, from text a Debian machine installs
by package name. The corpus stays outside git; this script is how to make it again.

    sudo apt-get install -y --no-install-recommends debian-handbook postgresql-doc-15 perl-doc git-doc \
        dict-gcide fortunes python3-doc sqlite3-doc gnu-standards bash-doc
    python scripts/build_corpus.py runs/corpus            # runs/corpus/{train,heldout}/*.txt + manifest.json

Kinds of text: a system administration handbook, a database manual, Perl's manual pages in POD
(not man pages), git's documentation, a dictionary (GCIDE), fortunes (quotations, jokes,
verse), Python's documentation sources. Two whole sources are held out of training for
validation (`e2llm validate --docs runs/corpus/heldout`): SQLite's documentation and the GNU
coding standards + Bash reference manual.

Never read: manual pages, /usr/share/doc/*/copyright, changelogs, /usr/share/common-licenses:
those are the test sets of text unlike the training corpus (runs/machine-docs, docs/defaults.md).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterator

DOC_WORDS = 2500  # long texts are cut into documents of about this many words, at paragraph breaks
NEVER = re.compile(r"(^|/)(copyright|changelog[^/]*|man\d?|common-licenses)(/|$)", re.IGNORECASE)


class _Text(HTMLParser):
    """Visible text of an HTML page: block elements become paragraph breaks; scripts, styles
    and navigation are dropped."""

    SKIP = {"script", "style", "head", "nav", "footer"}
    BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "dt", "dd", "table", "section", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_text(raw: str) -> str:
    p = _Text()
    p.feed(raw)
    return tidy("".join(p.parts))


def tidy(text: str) -> str:
    """Runs of spaces to one, at most one blank line, lines of punctuation only dropped."""
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if not re.fullmatch(r"[\W_]{3,}", line)]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def pod_text(raw: str) -> str:
    """POD to plain text: directives kept as headings, formatting codes unwrapped."""
    out = []
    for line in raw.splitlines():
        if line.startswith("=head") or line.startswith("=item"):
            out.append("\n" + line.split(None, 1)[1] if " " in line else "")
        elif line.startswith("="):
            continue
        else:
            out.append(line)
    text = "\n".join(out)
    for _ in range(3):  # nested codes: B<C<x>>
        text = re.sub(r"[A-Z]<<+\s*(.*?)\s*>>+|[A-Z]<([^<>]*)>", lambda m: (m.group(1) or m.group(2) or "").split("|")[0], text)
    return tidy(text)


GCIDE_SOURCE = re.compile(r"\[(?:1913 Webster|Webster 1913|WordNet 1\.5|PJC|Century Dict\.)(?: ?\+ ?PJC)?[^\]\n]{0,20}\]")
GCIDE_ACCENT = re.compile(r"\[[=~^'\".-]?([a-zA-Z])(?:[=~^'\".-]|mac|um|cir|grave|acute|dot)?\]")  # acad['e]mie, m[=a]ke
GCIDE_PRONUNCIATION = re.compile(r"\\[^\\\n]{1,60}\\,?")  # Abstract \Ab*stract"\, v. t.


def gcide_text(raw: str) -> str:
    """The dictionary's definitions and quotations without its bookkeeping: a line of source
    markers after every sense ("[1913 Webster]") is the most frequent string of the corpus, and
    what an early run's reconstructions collapsed into; pronunciations in backslashes and the
    braces of cross-references go too, and accent codes ("acad['e]mie") become their letter."""
    text = html.unescape(re.sub(r"<[^>]{0,60}>", "", raw))
    text = GCIDE_SOURCE.sub("", text)
    text = GCIDE_ACCENT.sub(r"\1", re.sub(r"\[(ae|oe|AE|OE)\]", r"\1", text))
    text = GCIDE_PRONUNCIATION.sub("", text)
    text = re.sub(r"\{([^{}\n]{0,60})\}", r"\1", text)
    return tidy(text)


def split_words(text: str, words: int = DOC_WORDS) -> list[str]:
    """Documents of about ``words`` words, cut at paragraph breaks."""
    docs, current, count = [], [], 0
    for para in text.split("\n\n"):
        current.append(para)
        count += len(para.split())
        if count >= words:
            docs.append("\n\n".join(current))
            current, count = [], 0
    if count >= 50:
        docs.append("\n\n".join(current))
    return docs


def files(root: str, pattern: str) -> list[Path]:
    return sorted(p for p in Path(root).glob(pattern) if p.is_file() and not NEVER.search(str(p)))


def read(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz" or path.suffix == ".dz":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


# source name -> (held out?, texts)
def sources() -> dict[str, tuple[bool, Callable[[], Iterator[str]]]]:
    return {
        "debian-handbook": (False, lambda: (html_text(read(p)) for p in files("/usr/share/doc/debian-handbook/html/en-US", "*.html"))),
        "postgresql": (False, lambda: (html_text(read(p)) for p in files("/usr/share/doc/postgresql-doc-15/html", "*.html"))),
        "perl": (False, lambda: (pod_text(read(p)) for p in files("/usr/share/perl/5.36.0/pod", "*.pod"))),
        "git": (False, lambda: (tidy(read(p)) for p in files("/usr/share/doc/git-doc", "**/*.txt"))),
        "gcide": (False, lambda: (gcide_text(read(p)) for p in files("/usr/share/dictd", "gcide.dict.dz"))),
        "fortunes": (False, lambda: (tidy(read(p).replace("\n%\n", "\n\n")) for p in files("/usr/share/games/fortunes", "*")
                                     if "." not in p.name)),
        "python-docs": (False, lambda: (tidy(read(p)) for p in files("/usr/share/doc/python3.11/html/_sources", "**/*.rst.txt"))),
        "sqlite": (True, lambda: (html_text(read(p)) for p in files("/usr/share/doc/sqlite3", "*.html"))),
        "gnu-manuals": (True, lambda: (tidy(read(p)) for p in files("/usr/share/doc/gnu-standards", "standards.text.gz")
                                       + files("/usr/share/info", "bash.info.gz"))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-words", type=int, default=1_500_000, help="per source (the dictionary alone has ~15M)")
    args = parser.parse_args()
    manifest = {}
    for name, (held_out, texts) in sources().items():
        folder = args.out / ("heldout" if held_out else "train")
        folder.mkdir(parents=True, exist_ok=True)
        n = words = 0
        digest = hashlib.sha256()
        try:
            for text in texts():
                for doc in split_words(text):
                    (folder / f"{name}-{n:05d}.txt").write_text(doc, encoding="utf-8")
                    digest.update(doc.encode())
                    n, words = n + 1, words + len(doc.split())
                    if words >= args.max_words:
                        break
                if words >= args.max_words:
                    break
        except FileNotFoundError as e:
            print(f"{name}: skipped ({e.filename} missing; install its package, see --help)", file=sys.stderr)
        manifest[name] = {"held_out": held_out, "documents": n, "words": words, "sha256": digest.hexdigest()[:16]}
        print(f"{name:16s} {'held out' if held_out else 'train':8s} {n:6d} documents {words:10,d} words")
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
