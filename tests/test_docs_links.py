"""Every relative Markdown link in README.md and docs/*.md leads somewhere: the file exists and,
where the link names a ``#section``, the file has a heading whose GitHub anchor is that section.

Sections get renamed and files moved while the links to them stay (issue 34 found three
references to README sections that no longer existed). External (http, https, mailto) links
are skipped: the tests run offline.
"""
import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+).*?\1", re.S)
# [text](target) or ![alt](target), with an optional "title"; the text may hold one level of brackets
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto: ...


def _fence_free(text: str) -> str:
    """The text with fenced code blocks blanked out: a '#' or a link there is code."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _prose(text: str) -> str:
    """Nor code spans."""
    return CODE_SPAN.sub("", _fence_free(text))


def links(text: str) -> list[str]:
    prose = _prose(text)
    return INLINE_LINK.findall(prose) + REFERENCE_DEF.findall(prose)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text of any links, no markup or punctuation but '-' and
    '_', lowercase, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, heading in HEADING.findall(_fence_free(text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(doc: Path) -> list[str]:
    out = []
    for target in links(doc.read_text(encoding="utf-8")):
        if not target or EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / unquote(path)).resolve() if path else doc
        if not file.exists():
            out.append(f"{target}: no file {os.path.relpath(file, doc.parent)} beside {doc.name}")
        elif anchor and file.suffix == ".md" and unquote(anchor).lower() not in anchors(file.read_text(encoding="utf-8")):
            out.append(f"{target}: {file.name} has no heading with anchor #{anchor}")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_a_file_and_a_heading(doc):
    assert broken_links(doc) == []


def test_the_check_sees_broken_links(tmp_path):
    """It would fail on the faults it guards: a missing file, a missing section, a renamed one."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## 4-bit decoder (QLoRA)\n\n## Speed, at last!\n\n## Speed, at last!\n"
                                                "```bash\n# not a heading\n```\n", encoding="utf-8")
    (tmp_path / "plot.png").write_bytes(b"")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/guide.md) [ok](docs/guide.md#4-bit-decoder-qlora) ![ok](plot.png \"a plot\") [ok](#top)\n"
        "[ok](docs/guide.md#speed-at-last) [ok](docs/guide.md#speed-at-last-1) [ok](https://example.com/x.md)\n"
        "`[code](nowhere.md)`\n\n```\n[code](nowhere.md)\n```\n\n# Top\n"
        "[gone](docs/missing.md) [gone](docs/guide.md#4-bit-decoder) [gone](docs/guide.md#not-a-heading)\n"
        "[gone](docs/guide.md#speed-at-last-2)\n\n[ref]: docs/old.md\n", encoding="utf-8")
    assert [f.split(":")[0] for f in broken_links(readme)] == ["docs/missing.md", "docs/guide.md#4-bit-decoder",
                                               "docs/guide.md#not-a-heading", "docs/guide.md#speed-at-last-2", "docs/old.md"]
