#!/usr/bin/env python3
"""Link check of the book and the README (tests/interop/docs.sh runs it).

    tests/interop/linkcheck.py BOOK_HTML_DIR

Checks, and prints one line per problem (exit 1 if any):
  1. in the built book (every .html under BOOK_HTML_DIR): every relative link or source
     (href, src) resolves to a file of the build, and every #fragment to an id (or a name)
     in the page it points at;
  2. in the Markdown of README.md and docs/src/: every relative link resolves to a file of
     the repository (and a #fragment in a link to a Markdown file outside the book, such as
     the README, to one of its headings); every backticked repository path (`src/...`,
     `tests/...`, `config/...`, `benches/...`, `deploy/...`, `fuzz/...`, `examples/...`,
     `optin-smtp/...`, `docs/...`, `.ci/...`), and every such path in a code block, names
     a file or directory of the repository. Upper-case words (`TARGET`, `FILE`), `<...>`,
     `{...}`, `*` and `…` in a path stand for any name; a path git ignores (fuzz/artifacts/,
     say) is one the tools make at run time and is not looked for;
  3. nothing in those files, nor in benches/relay-bench, mentions a path outside the
     repository such as `../shared`.
The repository's files are what `git ls-files` lists (tracked, and new files not ignored),
or the files on disk when this is not a git work tree. Python 3 standard library only.
"""

import html.parser
import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
REPO_DIRS = ("src", "tests", "config", "benches", "deploy", "fuzz", "examples",
             "optin-smtp", "docs", ".ci")
PATH_RE = re.compile(
    r"(?<![\w./$-])(?:\$PWD/|\./)?((?:" + "|".join(re.escape(d) for d in REPO_DIRS)
    + r")/[\w.*<>{}…/+-]*)")
OUTSIDE_RE = re.compile(r"\.\./shared|/work/shared|/work/main")
SCHEME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")

problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


# ------------------------------------------------------------------ the repository

def repo_files():
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            check=True, capture_output=True).stdout.decode()
        files = {f for f in out.split("\0") if f and (ROOT / f).exists()}
        return files, True
    except (OSError, subprocess.CalledProcessError):
        files = set()
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in (".git", "target")]
            for name in filenames:
                files.add(str(Path(dirpath, name).relative_to(ROOT)))
        return files, False


FILES, IN_GIT = repo_files()
DIRS = {str(Path(f).parents[i]) for f in FILES for i in range(len(Path(f).parts) - 1)}


def ignored(path):
    if not IN_GIT:
        return False
    return subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", path],
                          capture_output=True).returncode == 0


def placeholder(segment):
    return (re.fullmatch(r"[A-Z][A-Z0-9_]*", segment) is not None
            or any(c in segment for c in "<>{}*…"))


def segment_regex(segment):
    if re.fullmatch(r"[A-Z][A-Z0-9_]*", segment):
        return r"[^/]+"
    out = ""
    for part in re.split(r"(<[^>]*>|\{[^}]*\}|\*|…)", segment):
        if not part:
            continue
        if part[0] in "<{*…":
            out += r"[^/]*"
        else:
            out += re.escape(part)
    return out


def repo_path_exists(path):
    path = path.rstrip(".,;:")
    is_dir = path.endswith("/")
    path = path.strip("/")
    if not path:
        return True
    segments = path.split("/")
    if not any(placeholder(s) for s in segments):
        return path in (DIRS if is_dir else FILES | DIRS)
    pattern = re.compile("/".join(segment_regex(s) for s in segments))
    candidates = DIRS if is_dir else FILES | DIRS
    return any(pattern.fullmatch(c) for c in candidates)


# ------------------------------------------------------------------ Markdown

def github_slug(heading):
    heading = re.sub(r"\{#[^}]*\}\s*$", "", heading).strip().lower()
    heading = re.sub(r"[`*_\[\]()]", "", heading)
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def markdown_anchors(text):
    anchors = set()
    for line in strip_fences(text)[0].splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            explicit = re.search(r"\{#([^}]+)\}\s*$", m.group(1))
            anchors.add(explicit.group(1) if explicit else github_slug(m.group(1)))
    return anchors


def strip_fences(text):
    """(the text with fenced code blocks blanked, the code blocks' lines with numbers)."""
    out, code, fence = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(```+|~~~+)", line)
        if fence is None and m:
            fence = m.group(1)
            out.append("")
        elif fence is not None and line.strip().startswith(fence):
            fence = None
            out.append("")
        elif fence is not None:
            code.append((number, line))
            out.append("")
        else:
            out.append(line)
    return "\n".join(out), code


CODE_SPAN_RE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
LINK_RE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def check_markdown(md_path):
    rel = md_path.relative_to(ROOT)
    text = md_path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if OUTSIDE_RE.search(line):
            problem(f"{rel}:{number}", f"mentions a path outside the repository: {line.strip()}")
    prose, code_lines = strip_fences(text)

    def line_of(offset):
        return prose.count("\n", 0, offset) + 1

    # Code spans: repository paths, then blanked so links are not looked for inside them.
    spans = []
    for m in CODE_SPAN_RE.finditer(prose):
        content = m.group(2).strip()
        first = content.split()[0] if content.split() else ""
        for token in {content, first}:
            pm = PATH_RE.fullmatch(token)
            if pm:
                check_repo_path(pm.group(1), f"{rel}:{line_of(m.start())}")
        spans.append((m.start(), m.end()))
    blanked = list(prose)
    for start, end in spans:
        for i in range(start, end):
            if blanked[i] != "\n":
                blanked[i] = " "
    blanked = "".join(blanked)

    for m in LINK_RE.finditer(blanked):
        target = m.group(1)
        where = f"{rel}:{line_of(m.start())}"
        if SCHEME_RE.match(target) or target.startswith("//"):
            continue
        path_part, _, fragment = target.partition("#")
        path_part = urllib.parse.unquote(path_part)
        if not path_part:
            if fragment and not md_path.is_relative_to(ROOT / "docs" / "src"):
                if fragment not in markdown_anchors(text):
                    problem(where, f"no heading for #{fragment}")
            continue
        resolved = os.path.normpath(md_path.parent / path_part)
        try:
            inside = Path(resolved).relative_to(ROOT)
        except ValueError:
            problem(where, f"link leaves the repository: {target}")
            continue
        if str(inside) not in FILES and str(inside) not in DIRS:
            problem(where, f"link to a file not in the repository: {target}")
            continue
        book = ROOT / "docs" / "src"
        if md_path.is_relative_to(book) and not Path(resolved).is_relative_to(book):
            problem(where, f"a page of the book links outside docs/src (not in the built book): {target}")
        if fragment and str(inside).endswith(".md") and not Path(resolved).is_relative_to(book):
            if fragment not in markdown_anchors((ROOT / inside).read_text(encoding="utf-8")):
                problem(where, f"no heading for #{fragment} in {inside}")

    for number, line in code_lines:
        for pm in PATH_RE.finditer(line):
            check_repo_path(pm.group(1), f"{rel}:{number}")


def check_repo_path(path, where):
    path = path.rstrip(".,;:)")
    if repo_path_exists(path):
        return
    if ignored(path.rstrip("/")):
        return
    problem(where, f"names `{path}`, which is not in the repository")


# ------------------------------------------------------------------ built HTML

class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name") and (name == "id" or tag == "a"):
                self.ids.add(value)
            if name in ("href", "src"):
                self.links.append((tag, value, self.getpos()[0]))


def check_html(book):
    pages = {}
    for path in sorted(book.rglob("*.html")):
        page = Page()
        page.feed(path.read_text(encoding="utf-8"))
        pages[path.resolve()] = page
    if not pages:
        problem(str(book), "no HTML pages: was the book built?")
    for path, page in pages.items():
        rel = path.relative_to(book.resolve())
        for tag, link, line in page.links:
            if SCHEME_RE.match(link) or link.startswith("//"):
                continue
            path_part, _, fragment = link.partition("#")
            path_part = urllib.parse.unquote(path_part.split("?", 1)[0])
            if not path_part:
                target = path
            elif path_part.startswith("/"):
                target = (book / path_part.lstrip("/")).resolve()
            else:
                target = (path.parent / path_part).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problem(f"{rel}:{line}", f"<{tag}> links to a missing file: {link}")
                continue
            if fragment:
                fragment = urllib.parse.unquote(fragment)
                other = pages.get(target)
                if other is None:
                    continue  # a fragment into a non-HTML file (none expected)
                if fragment not in other.ids:
                    problem(f"{rel}:{line}", f"no id {fragment!r} in {target.relative_to(book.resolve())}: {link}")
    return len(pages)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    book = Path(argv[1])
    count = check_html(book)
    markdown = [ROOT / "README.md"] + sorted((ROOT / "docs" / "src").rglob("*.md"))
    for md in markdown:
        check_markdown(md)
    for extra in [ROOT / "benches" / "relay-bench"]:
        if extra.exists():
            for number, line in enumerate(extra.read_text(encoding="utf-8").splitlines(), 1):
                if OUTSIDE_RE.search(line):
                    problem(f"{extra.relative_to(ROOT)}:{number}",
                            f"mentions a path outside the repository: {line.strip()}")
    for p in problems:
        print(p)
    print(f"{count} HTML pages and {len(markdown)} Markdown files checked: "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
