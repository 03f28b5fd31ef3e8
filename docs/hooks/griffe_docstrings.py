"""A Griffe extension for the API reference: how fnn's docstrings are read.

* ``Example:`` sections hold doctests; Griffe's Google-style parser reads only
  ``Examples:`` as code, so the singular is read as the plural.
* An experiment module's docstring is the one it has once imported: some fill in a
  shared description at import (``__doc__ = __doc__.replace("CORPUS_DOC",
  corpus.DESCRIPTION)``), which is done here from the source, without importing them.
  Its square brackets are text (``[seed=0]`` on a ``Run:`` line), not Markdown links.
"""

from __future__ import annotations

import ast
import re

import griffe

EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


def filled_in(module: griffe.Module) -> str:
    """The module's docstring after its ``__doc__ = __doc__.replace(TEXT, NAME)`` lines."""
    doc = module.docstring.value if module.docstring is not None else ""
    assignment = module.members.get("__doc__")
    if assignment is None:
        return doc
    call = ast.parse(str(assignment.value), mode="eval").body
    is_replace = isinstance(call, ast.Call) and ast.unparse(call.func) == "__doc__.replace"
    if not (is_replace and len(call.args) == 2):
        raise ValueError(f"{module.path}: cannot read its __doc__ = {assignment.value}")
    old = ast.literal_eval(call.args[0])
    new = ast.literal_eval(str(module[ast.unparse(call.args[1])].value))
    return doc.replace(old, new)


class FnnDocstrings(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.is_module and obj.path.split(".")[0] == "experiments":
            escaped = filled_in(obj).replace("[", "\\[").replace("]", "\\]")
            if obj.docstring is None:
                obj.docstring = griffe.Docstring(escaped, parent=obj)
            else:
                obj.docstring.value = escaped
        if obj.docstring is not None:
            obj.docstring.value = EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
