"""The documentation as a reader meets it: every relative link and #anchor in README.md, docs/ and results/README.md
leads somewhere, by GitHub's rules for heading anchors; and the README's commands are the ones CI runs."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md"]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"(`+).*?\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, as a renderer reads links and headings."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (link targets, HTML tags and markup gone) in lower case, every
    character but letters, digits, spaces, '-' and '_' dropped, spaces turned into '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page``; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page.read_text()):
        match = _HEADING.match(line)
        if match:
            slug = github_slug(match[2])
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The link targets of ``page`` outside code, external ones (a scheme such as https:) left out."""
    targets = []
    for line in prose_lines(page.read_text()):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", match[1], re.IGNORECASE):
                targets.append(match[1])
    return targets


def broken(page: Path, target: str) -> str | None:
    """Why ``target``, a link on ``page``, leads nowhere; None if it resolves."""
    path, _, anchor = target.partition("#")
    destination = (page.parent / unquote(path)).resolve() if path else page
    if not destination.exists():
        return f"{target}: no such file or folder"
    if anchor:
        if destination.suffix != ".md" or destination.is_dir():
            return f"{target}: an anchor into something that is not a markdown page"
        if anchor not in anchors(destination):
            return f"{target}: {os.path.relpath(destination, ROOT)} has no heading with anchor #{anchor}"
    return None


def test_github_slugs() -> None:
    assert github_slug("Stopping, resuming, exit codes") == "stopping-resuming-exit-codes"
    assert github_slug("Clusters (SLURM)") == "clusters-slurm"
    assert github_slug("Weights & Biases") == "weights--biases"
    assert github_slug("A GPU's first ten minutes") == "a-gpus-first-ten-minutes"
    assert github_slug("`cifar.nets` and [links](x.md)") == "cifarnets-and-links"
    assert github_slug("Recipe search at 35 epochs (default net, validation split, H200)") == (
        "recipe-search-at-35-epochs-default-net-validation-split-h200")


def test_links_and_anchors_are_read_as_a_renderer_reads_them(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n## Part\n## Part\n[a](#part-1) `[not](a-link.md)` [b](other.md#x) "
                    "[c](https://example.com/y.md)\n```\n[in code](nowhere.md)\n# not a heading\n```\n")
    (tmp_path / "other.md").write_text("# X\n")
    assert anchors(page) == {"title", "part", "part-1"}
    assert links(page) == ["#part-1", "other.md#x"]
    assert broken(page, "#part-1") is None and broken(page, "other.md#x") is None
    assert "page.md has no heading with anchor #y" in (broken(page, "#y") or "")
    assert "no such file" in (broken(page, "missing.md") or "")


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert page.is_file(), f"{page.relative_to(ROOT)} is missing"
    problems = [problem for target in links(page) if (problem := broken(page, target))]
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    assert {page for page in (ROOT / "docs").glob("*.md")} <= linked


def test_the_readme_is_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def ci_commands() -> tuple[list[str], str]:
    """What .ci/run runs: its setup (from creating the virtual environment to installing the requirements, with
    pip's -q for quiet CI logs left out) and its test command."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("python3 -m venv"))
    end = next(i for i, line in enumerate(lines) if "pip install" in line)
    setup = [" ".join(word for word in shlex.split(line) if word != "-q") for line in lines[start:end + 1]]
    [test] = [line for line in lines if re.fullmatch(r"python -m pytest\b.*", line)]
    return setup, test


def quick_start_blocks() -> list[str]:
    """The bash blocks of the README's Quick start, one string each."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL)]


def test_the_readme_commands_are_the_ones_ci_runs() -> None:
    setup, test = ci_commands()
    assert setup == ["python3 -m venv .venv", ". .venv/bin/activate", "python -m pip install -r requirements.txt"]
    online, offline, tests = quick_start_blocks()
    steps = online.split(" && ")
    assert steps[:len(setup)] == setup and steps[len(setup):] == ["accelerate launch train.py --epochs 35"]
    assert offline.split(" && ") == [*setup, "mkdir -p data", "tar xzf ../shared/data/cifar10-jpeg.tar.gz -C data/",
                                     "accelerate launch train.py --epochs 35"]
    assert tests == test == "python -m pytest"
