"""HTML mail -> plain text for operators.

The HTML is first sanitised with nh3 (Ammonia): scripts, styles, event
handlers and unknown tags are gone before we look at it. What is left is
turned into text by a small stdlib parser: block elements become line breaks,
list items get "- ", links keep their target, and ``<blockquote>`` content is
prefixed with "> " so the quote stripper recognises it like a plain-text quote.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import nh3

_TAGS = {
    "a", "b", "blockquote", "br", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "li", "ol", "p",
    "pre", "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "u", "ul", "code", "font", "center",
}  # fmt: skip
_BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "ul", "ol", "pre", "center", "blockquote", "hr"}
_PARAGRAPH = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "pre", "blockquote", "hr"}
_SPACES = re.compile(r"[ \t\u00a0]+")


def sanitise(html: str) -> str:
    """The HTML with only harmless formatting tags left (no scripts, styles, images, handlers)."""
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes={"a": {"href"}},
        url_schemes={"http", "https", "mailto", "tel"},
        link_rel=None,
        strip_comments=True,
    )


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.quote = 0
        self.pre = 0
        self.href: list[str | None] = []
        self.link_text: list[str] = []

    def _break(self, blank: bool = False) -> None:
        """End the current line; ``blank`` also leaves an empty line (paragraphs)."""
        text = "".join(self.current)
        if not self.pre:
            text = _SPACES.sub(" ", text).strip()
        self.current = []
        prefix = "> " * self.quote
        if text:
            self.lines.append(prefix + text)
        if blank and self.lines and self.lines[-1] != "":
            self.lines.append("")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._break()
        elif tag in _BLOCK:
            self._break(tag in _PARAGRAPH)
            if tag == "blockquote":
                self.quote += 1
            elif tag == "pre":
                self.pre += 1
        elif tag == "li":
            self._break()
            self.current.append("- ")
        elif tag in ("td", "th") and self.current:
            self.current.append("  ")
        elif tag == "a":
            self.href.append(dict(attrs).get("href"))
            self.link_text.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in _BLOCK or tag == "li":
            self._break(tag in _PARAGRAPH)
            if tag == "blockquote":
                self.quote = max(0, self.quote - 1)
            elif tag == "pre":
                self.pre = max(0, self.pre - 1)
        elif tag == "a" and self.href:
            href = self.href.pop()
            text = self.link_text.pop().strip()
            if href and not href.startswith("mailto:") and href not in text:
                self.current.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self.pre:
            data = data.replace("\r", " ").replace("\n", " ")
        if self.link_text:
            self.link_text[-1] += data
        if self.pre and "\n" in data:
            first, *rest = data.split("\n")
            self.current.append(first)
            for piece in rest:
                self._break()
                self.current.append(piece)
            return
        self.current.append(data)

    def text(self) -> str:
        self._break()
        out = "\n".join(self.lines)
        return re.sub(r"\n{3,}", "\n\n", out).strip()


def html_to_text(html: str) -> str:
    parser = _Text()
    parser.feed(sanitise(html))
    parser.close()
    return parser.text()
