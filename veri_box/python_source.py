"""Parsing Python source (reward functions, trainer modules) safely from any thread."""

from __future__ import annotations

import ast
import threading

# CPython 3.11 before 3.11.8 (gh-106905) keeps ast.parse's recursion depth in interpreter-wide
# state, so two threads parsing at once (two jobs uploading their trainer code, or an upload
# beside a reward function check) can fail with "AST constructor recursion depth mismatch".
_LOCK = threading.Lock()


def parse(source: str | bytes, filename: str = "<unknown>") -> ast.Module:
    with _LOCK:
        return ast.parse(source, filename)
