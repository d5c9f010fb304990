"""The ``rmn`` command line: :func:`main` is the console script, :func:`build_parser` its verbs."""

from serving.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
