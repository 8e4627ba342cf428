"""Check the built site: it works offline, and no formula is left as raw TeX.

Run by ``make docs`` after ``mkdocs build``: ``python docs/check_site.py site``.
Every page must load its scripts and stylesheets from the site itself (the math
renderer ships with it), and outside the math elements that MathJax typesets
(``arithmatex``), code and scripts, no ``$$``, ``\\begin{``, ``\\(`` or ``\\[``
may be left: those are formulas the Markdown never handed to MathJax.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

RAW_TEX = re.compile(r"\$\$|\\begin\{|\\\(|\\\[")
# Elements whose text is not prose: math for MathJax, code, scripts, styles.
SKIPPED = {"script", "style", "code", "pre", "textarea"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.external: list[str] = []
        self.raw: list[str] = []
        self._open: list[tuple[str, bool]] = []  # (tag, skipped)

    def _skipping(self) -> bool:
        return any(skipped for _, skipped in self._open)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "script" and _external(a.get("src")):
            self.external.append(f"script {a['src']}")
        if (
            tag == "link"
            and "stylesheet" in (a.get("rel") or "")
            and _external(a.get("href"))
        ):
            self.external.append(f"stylesheet {a['href']}")
        if tag in ("link", "meta", "img", "br", "hr", "input", "source"):
            return  # void elements: never closed
        math = "arithmatex" in (a.get("class") or "").split()
        self._open.append((tag, tag in SKIPPED or math))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                del self._open[i:]
                return

    def handle_data(self, data: str) -> None:
        if not self._skipping():
            self.raw += [m.group(0) for m in RAW_TEX.finditer(data)]


def _external(url: str | None) -> bool:
    return bool(url) and re.match(r"(https?:)?//", url) is not None


def check_page(html: str) -> list[str]:
    """What is wrong with one page: external scripts or stylesheets, raw TeX."""
    page = _Page()
    page.feed(html)
    problems = [f"loads {what} from elsewhere" for what in page.external]
    problems += [f"raw TeX {tex!r} outside the math" for tex in page.raw]
    return problems


def check_site(root: Path) -> list[str]:
    """Every problem of every page under ``root``, each with its page."""
    problems = []
    for path in sorted(root.rglob("*.html")):
        for problem in check_page(path.read_text(encoding="utf-8")):
            problems.append(f"{path.relative_to(root)}: {problem}")
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "site")
    if not (root / "index.html").is_file():
        print(f"{root} holds no built site: run mkdocs build first", file=sys.stderr)
        return 1
    problems = check_site(root)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
