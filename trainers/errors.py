"""Failures a trainer reports with a code the API shows (error.code), not as a stack trace."""

from __future__ import annotations


class TrainerError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
