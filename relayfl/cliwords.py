"""Error messages in the words of the interface the user typed.

The library raises :class:`~relayfl.errors.RelayflError` messages in Python terms
(``num_clients must be >= 1``, ``pass num_nodes=32``), right for a Python caller. A
command-line user never typed ``num_clients``: :func:`speak_cli` rewrites the Python
names of a command's options into the options themselves (``--clients must be >= 1``,
``pass --clients 32``), using the command's own :mod:`argparse` parser, so a renamed or
added option needs no second list here.
"""

from __future__ import annotations

import argparse
import copy
import re
import warnings
from pathlib import Path

__all__ = [
    "HelpFormatter",
    "command_parser",
    "one_line_warnings",
    "option_names",
    "speak_cli",
]

#: Python names the library uses for an option under another name, with the ``dest``\s
#: that may stand for them (``compare`` keeps the client count in ``clients``).
_ALIASES = {
    "num_clients": ("clients",),
    "num_nodes": ("num_clients", "clients"),
    "num_partitions": ("num_clients", "clients"),
}


def option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``dest`` -> the long option that sets it (``num_clients`` -> ``--clients``).

    When two options share a ``dest`` (``launch``'s ``--clients`` and ``--nodes``), the
    one registered last wins: a command's own name for it overrides the shared one.
    """
    names: dict[str, str] = {}
    for action in parser._actions:  # argparse has no public list of a parser's options
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs and action.dest not in ("help", argparse.SUPPRESS):
            names[action.dest] = next((s for s in longs if not s.startswith("--no-")), longs[0])
    for alias, dests in _ALIASES.items():
        found = [names[d] for d in dests if d in names]
        if found and alias not in names:
            names[alias] = found[0]
    return names


def speak_cli(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with the Python names of ``parser``'s options replaced by the options.

    Three forms are rewritten, each only where it is not already part of an option and
    not inside double quotes (``--run-config "lr=0.1"`` is already what to type):
    ``name=value`` becomes ``--option value``; a snake_case name (``num_clients``)
    becomes ``--option``; and a name that opens a rule (``alpha must be > 0``,
    ``local-steps must be >= 1``) becomes ``--alpha must ...``.
    """
    names = option_names(parser)

    def option(word: str) -> str | None:
        return names.get(word) or names.get(word.replace("-", "_"))

    def assign(m: re.Match[str]) -> str:
        opt = option(m.group(1))
        return f"{opt} {m.group(2)}" if opt else m.group(0)

    def snake(m: re.Match[str]) -> str:
        return option(m.group(1)) or m.group(0)

    def rewrite(text: str) -> str:
        text = re.sub(r"(?<![\w.\-])([a-z][a-z0-9_]*)=([^\s,;)]+)", assign, text)
        text = re.sub(r"(?<![\w.\-`'\"])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w(=])", snake, text)
        return re.sub(r"(?<![\w.\-])([a-z][a-z0-9\-]*)(?= (?:\(\w+\) )?must )", snake, text)

    parts = re.split(r'("[^"\n]*")', message)  # "quoted" text is already what to type
    return "".join(part if i % 2 else rewrite(part) for i, part in enumerate(parts))


def command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-parser of ``command`` (``simulate``, ``node``, ...) of the ``relayfl`` parser;
    ``parser`` itself when it has no such sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that shows every option's default, even of options without help text.

    argparse's own :class:`~argparse.ArgumentDefaultsHelpFormatter` adds the default only
    where there is help text, and writes ``(default: None)`` where the real default
    depends on other options; here an option whose default is None explains it in its
    help text instead, and on/off flags show no ``(default: False)``.
    """

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        flag = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        return not (
            action.default is None
            or action.default is argparse.SUPPRESS
            or not action.option_strings
            or flag
        )

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.help is not argparse.SUPPRESS and self._shows_default(action):
            action = copy.copy(action)  # argparse prints nothing for an option without help
            action.help = ""
            action.help = self._get_help_string(action)
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").strip()
        default = action.default
        if "%(default)" in text or not self._shows_default(action):
            return text
        if isinstance(default, tuple | list):
            shown = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
            return f"{text} (default: {shown})".strip()
        return f"{text} (default: %(default)s)".strip()


_PACKAGE = str(Path(__file__).resolve().parent)


def one_line_warnings() -> None:
    """Print relayfl's own warnings as one ``relayfl: warning: ...`` line.

    Python's default shows the file, the line number and the source line of the
    ``warnings.warn`` call: two lines of relayfl internals a CLI user cannot act on.
    Warnings from other packages keep Python's format.
    """
    default = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):  # type: ignore[no-untyped-def]
        if str(Path(filename).resolve()).startswith(_PACKAGE):
            return f"relayfl: warning: {str(message).removeprefix('relayfl: ')}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
