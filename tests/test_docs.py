"""Every reference to a repository document resolves: the file exists and its ``#anchor`` names a
heading in it (GitHub's heading ids).

Checked in src/, tests/, configs/, bench/, docs/, README.md, Makefile and pyproject.toml:

* ``docs/<name>.md`` and ``docs/<name>.md#<anchor>`` anywhere (a path from the repository root);
* Markdown links ``[text](<target>.md#<anchor>)`` and ``[text](#<anchor>)`` in ``.md`` files,
  resolved from the linking file's folder;
* a bare ``<name>.md`` naming a document of docs/ (or one of the three that used to live outside the
  repository) outside a Markdown file is an error: write ``docs/<name>.md``;
* ``docs/<name>.md §3``: sections are named by anchor, not by number, so renumbering cannot break
  them silently.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "tests", "configs", "bench", "docs", "README.md", "Makefile", "pyproject.toml")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt", ".cfg", ".json", ""}
#: documents that were once cited without a path; a bare mention of them is always an error
FORMER_OUTSIDE = ("algorithms", "protocol", "embedded")
#: names of docs/ documents that are also files every run writes (``<run>/results.md``)
RUN_FILES = ("results",)

_DOC_PATH = re.compile(r"(?<![\w/.-])(docs/[\w./-]*?\.md)(?:#([\w-]+))?")
_MD_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]*)\)")
_SECTION_NUMBER = re.compile(r"(?<![\w/.-])(docs/[\w./-]*?\.md)`?,?\s*§")
_FENCE = re.compile(r"^\s*(```|~~~)")


def slug(heading: str) -> str:
    """GitHub's id for a heading text: links reduced to their text, lowercase, punctuation other
    than ``-`` and ``_`` dropped, spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(md: Path) -> set[str]:
    """Ids of every heading of a Markdown file (repeated headings get ``-1``, ``-2``, … as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in md.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            k = seen.get(base, 0)
            seen[base] = k + 1
            out.add(base if k == 0 else f"{base}-{k}")
    return out


def scanned_files(root: Path) -> list[Path]:
    files = []
    for name in SCANNED:
        top = root / name
        if top.is_file():
            files.append(top)
        elif top.is_dir():
            files += [p for p in sorted(top.rglob("*")) if p.is_file() and p.suffix in SUFFIXES
                      and "__pycache__" not in p.parts and not any(x.endswith(".egg-info") for x in p.parts)]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def problems(root: Path) -> list[str]:
    """One line per unresolved reference under ``root`` (``file:line: reason``)."""
    # style.md (the outside guide docs/contributing.md was written from) must not be cited either
    # a run writes its own results.md (docs/reading_results.md): that name alone is not a reference
    docs = ({p.stem for p in (root / "docs").glob("*.md")} - set(RUN_FILES)) | set(FORMER_OUTSIDE) | {"style"}
    # not after ``/ "``: a path joined in code (``ROOT / "docs" / "judge.md"``, ``tmp_path / "results.md"``)
    bare = re.compile(r"(?<![\w/.-])(?<!/ \")(?<!/ ')(" + "|".join(sorted(map(re.escape, docs))) + r")\.md(?![\w])")
    cache: dict[Path, set[str]] = {}

    def check(src: str, target: Path, anchor: str | None, shown: str) -> list[str]:
        target = target.resolve()
        if not target.is_file():
            return [f"{src}: {shown}: no such file in the repository"]
        if anchor and target.suffix == ".md":
            ids = cache.setdefault(target, anchors(target))
            if anchor not in ids:
                return [f"{src}: {shown}: {target.relative_to(root.resolve())} has no heading with id #{anchor}"]
        return []

    out: list[str] = []
    for path in scanned_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        is_md = path.suffix == ".md"
        fenced = False
        for no, line in enumerate(text.splitlines(), 1):
            src = f"{path.relative_to(root)}:{no}"
            if is_md and _FENCE.match(line):
                fenced = not fenced
            if fenced:
                continue
            for m in _DOC_PATH.finditer(line):
                out += check(src, root / m.group(1), m.group(2), m.group(0))
            if _SECTION_NUMBER.search(line):
                out.append(f"{src}: a section named by number (§); use the heading's #anchor")
            if is_md:
                for m in _MD_LINK.finditer(line):
                    target = m.group(1)
                    if re.match(r"^[a-z][\w+.-]*:", target):  # http:, mailto:, …
                        continue
                    file, _, anchor = target.partition("#")
                    if file and not file.endswith(".md"):
                        continue
                    dest = path.parent / file if file else path
                    out += check(src, dest, anchor or None, target)
            else:
                # a Markdown link inside code (generated documents) is checked where the document
                # lands, relative to it; only the rest of the line is searched for bare names
                rest = _MD_LINK.sub("", line)
                for m in bare.finditer(rest):
                    out.append(f"{src}: bare {m.group(0)}: write docs/{m.group(1)}.md")
    return out


def test_every_document_reference_resolves():
    found = problems(ROOT)
    assert not found, "unresolved document references:\n" + "\n".join(found)


def test_the_documents_cited_by_the_code_exist():
    for name in FORMER_OUTSIDE:
        assert (ROOT / "docs" / f"{name}.md").is_file(), name


@pytest.mark.parametrize("heading, expected", [
    ("Panacea", "panacea"),
    ("panacea_avg", "panacea_avg"),
    ("Harmful score (HS) and HS+", "harmful-score-hs-and-hs"),
    ("6. Departures at CPU scale (the embedded default)", "6-departures-at-cpu-scale-the-embedded-default"),
    ("The `learned` judge: harmful answers", "the-learned-judge-harmful-answers"),
    ("[Link](x.md) text", "link-text"),
])
def test_slug_is_github_style(heading, expected):
    assert slug(heading) == expected


def test_the_checker_finds_each_kind_of_broken_reference(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## Two words\n\n## Two words\n\n```\n## not a heading\n```\n"
        "[ok](#two-words-1) [bad](#nope) [other](missing.md) [web](https://x.org/a.md)\n",
        encoding="utf-8")
    (tmp_path / "src" / "mod.py").write_text(
        '"""See docs/guide.md#two-words and docs/guide.md#two-words-1, docs/guide.md#not-a-heading,\n'
        "docs/gone.md, guide.md, protocol.md, docs/guide.md §2; the run writes report.md.\"\"\"\n"
        'LINK = "[guide.md](guide.md)"\nPATH = ROOT / "docs" / "guide.md"\n',
        encoding="utf-8")
    found = problems(tmp_path)
    text = "\n".join(found)
    assert "docs/guide.md:10: #nope" in text
    assert "docs/guide.md:10: missing.md: no such file" in text
    assert "src/mod.py:1: docs/guide.md#not-a-heading" in text
    assert "src/mod.py:2: docs/gone.md: no such file" in text
    assert "src/mod.py:2: bare guide.md" in text and "src/mod.py:2: bare protocol.md" in text
    assert "src/mod.py:2: a section named by number" in text
    assert len(found) == 7, text  # #two-words, #two-words-1, https, report.md, the link and the joined path are fine
