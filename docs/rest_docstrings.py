"""Griffe extension: turn the reST parts of adamx's docstrings into Markdown.

The docstrings are written for ``help()`` and doctest, in Google style with a
few reST constructs that Python-Markdown does not know. This rewrites them
once the package is loaded, before mkdocstrings renders anything:

* ``.. math::`` blocks become ``$$ ... $$`` and ``:math:`x``` becomes ``$x$``
  (pymdownx.arithmatex then hands both to MathJax);
* cross-reference roles (``:func:``, ``:class:``, ``:meth:``, ``:mod:``, ...)
  become links, resolved the way Sphinx would (the object's class, then its
  module, then the top-level package); a target that names nothing is a
  warning, so ``mkdocs build --strict`` fails on it;
* a paragraph ending in ``::`` followed by an indented block becomes a fenced
  Python block, and a bullet's continuation lines get Markdown's indentation;
* ``Example:`` becomes ``Examples:``, the heading Griffe's Google parser reads
  as doctest examples;
* a NamedTuple field's trailing ``# comment`` becomes the field's docstring,
  so the state classes list what each field holds;
* dunder methods other than ``__init__`` and ``__call__`` (``__repr__``) are
  dropped: the "public" member filter, which follows ``__all__`` in modules,
  would list them.
"""

from __future__ import annotations

import logging
import re
import textwrap
from typing import Any

import griffe

# A "mkdocs." logger: mkdocs counts its warnings, and --strict fails on them.
logger = logging.getLogger("mkdocs.plugins.adamx_docs")

_ROLE = re.compile(r":(func|class|meth|attr|mod|obj|data):`([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*(?P<rest>.*)$")
_DUNDER = re.compile(r"^__\w+__$")
_LITERAL_INTRO = re.compile(r"^(?P<text>.*\S)?\s*::\s*$")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _take_indented_block(lines: list[str], start: int, indent: int) -> int:
    """Index just past the block of lines indented more than ``indent``.

    Blank lines inside the block belong to it; trailing blank lines do not.
    """
    end = start
    i = start
    while i < len(lines):
        line = lines[i]
        if line.strip() and _indent_of(line) <= indent:
            break
        if line.strip():
            end = i + 1
        i += 1
    return end


_BULLET = re.compile(r"^(?P<indent>\s*)[*-] \S")


def _indent_list_items(text: str) -> str:
    """Indent the continuation of reST bullets (2 spaces) to Markdown's 4.

    Python-Markdown keeps a line, or a block after a blank line, in a list item
    only when it is indented by 4 spaces; reST aligns it with the item's text.
    """
    lines = text.split("\n")
    out: list[str] = []
    item_indent: int | None = None
    for line in lines:
        bullet = _BULLET.match(line)
        if bullet:
            # A bullet right after a paragraph line would join the paragraph.
            if out and out[-1].strip() and not _BULLET.match(out[-1]):
                out.append("")
            item_indent = len(bullet.group("indent"))
            out.append(line)
            continue
        if item_indent is not None and line.strip():
            if _indent_of(line) >= item_indent + 2:
                out.append("  " + line)
                continue
            item_indent = None
        out.append(line)
    return "\n".join(out)


def _convert_blocks(text: str) -> str:
    lines = _indent_list_items(text).split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        math = _MATH_DIRECTIVE.match(line)
        if math:
            indent = len(math.group("indent"))
            end = _take_indented_block(lines, i + 1, indent)
            body = [math.group("rest")] if math.group("rest") else []
            body += lines[i + 1 : end]
            content = textwrap.dedent("\n".join(body)).strip("\n")
            pad = " " * indent
            out += ["", pad + "$$"]
            out += [pad + c if c.strip() else "" for c in content.split("\n")]
            out += [pad + "$$", ""]
            i = end
            continue
        literal = _LITERAL_INTRO.match(line)
        if literal and not line.lstrip().startswith(".."):
            indent = _indent_of(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            end = _take_indented_block(lines, j, indent)
            if j < len(lines) and end > j:
                if literal.group("text"):
                    out.append(literal.group("text") + ":")
                code = textwrap.dedent("\n".join(lines[j:end]))
                pad = " " * indent
                out += ["", pad + "```python"]
                out += [pad + c if c.strip() else "" for c in code.split("\n")]
                out += [pad + "```", ""]
                i = end
                continue
        if line.strip() == "Example:" and _indent_of(line) == 0:
            line = "Examples:"
        out.append(line)
        i += 1
    return "\n".join(out)


class _Resolver:
    """Finds what a role names, the way Sphinx looks it up.

    The link goes to the object's canonical path (``adamx.optimizers.adam``):
    mkdocstrings registers that path for every object it renders, whether a
    page documents it as ``adamx.adam`` or as a member of its module.
    """

    def __init__(self, package: griffe.Module) -> None:
        self.package = package
        self.collection = package.modules_collection

    def _get(self, path: str) -> Any:
        try:
            return self.collection.get_member(path)
        except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError):
            return None

    def resolve(self, obj: griffe.Object, role: str, target: str) -> str | None:
        target = target.lstrip(".")
        scopes: list[str] = []
        owner: Any = obj
        while owner is not None:
            if owner.is_class or owner.is_module:
                scopes.append(owner.path)
            owner = owner.parent
        for candidate in [target] + [f"{scope}.{target}" for scope in scopes]:
            found = self._get(candidate)
            if found is None:
                continue
            if found.is_module and role not in ("mod", "obj"):
                # A function re-exported under its module's name is the
                # function at run time, but Griffe finds the module it
                # shadows; the role says which is meant.
                found = self._get(f"{_canonical(found)}.{found.name}")
                if found is None:
                    continue
            return _canonical(found)
        return None


def _canonical(obj: Any) -> str:
    try:
        return obj.final_target.path if obj.is_alias else obj.path
    except griffe.AliasResolutionError:
        return obj.path


def _convert_roles(text: str, obj: griffe.Object, resolver: _Resolver) -> str:
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)

    def link(match: re.Match[str]) -> str:
        target = match.group(2).strip()
        short = target.startswith("~")
        target = target.lstrip("~")
        shown = target.rpartition(".")[2] if short else target
        path = resolver.resolve(obj, match.group(1), target)
        if path is None:
            logger.warning(
                "%s: the docstring refers to %s, which names nothing in %s",
                obj.path,
                match.group(0),
                resolver.package.path,
            )
            return f"`{shown}`"
        return f"[`{shown}`][{path}]"

    return _ROLE.sub(link, text)


def _field_comment(attr: griffe.Attribute) -> str | None:
    """The trailing ``# comment`` on the line that declares a class field."""
    if attr.lineno is None or not attr.parent or not attr.parent.is_class:
        return None
    try:
        line = attr.module.lines[attr.lineno - 1]
    except (IndexError, AttributeError):
        return None
    # Checker pragmas (type: ignore, noqa) may share the line.
    parts = [p.strip() for p in line.split("#")[1:]]
    text = [p for p in parts if p and not p.startswith(("type:", "noqa", "pragma"))]
    return " # ".join(text) or None


class RestDocstrings(griffe.Extension):
    """Rewrite every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        resolver = _Resolver(pkg)
        for obj in list(_walk(pkg)):
            if obj.is_class:
                for name in [n for n in obj.members if _DUNDER.match(n)]:
                    if name not in ("__init__", "__call__"):
                        obj.del_member(name)
            if obj.is_attribute and obj.docstring is None:
                comment = _field_comment(obj)
                if comment:
                    obj.docstring = griffe.Docstring(comment, parent=obj)
            if obj.docstring is None:
                continue
            text = _convert_blocks(obj.docstring.value)
            obj.docstring.value = _convert_roles(text, obj, resolver)


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _walk(member)
