"""MkDocs hook: the docstrings' Sphinx roles (``:class:`~onepass.Tuner```) as
plain code (``Tuner``) in the API reference, instead of the role's raw text."""
import re

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(<code>)(~?)([^<]*)(</code>)")


def _code(match: re.Match) -> str:
    name = match.group(3)
    if match.group(2):                  # ~a.b.C shows C, as Sphinx does
        name = name.rsplit(".", 1)[-1]
    return f"{match.group(1)}{name}{match.group(4)}"


def on_page_content(html, **kwargs):
    return ROLE.sub(_code, html)
