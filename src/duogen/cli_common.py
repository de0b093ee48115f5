"""Argument-parser pieces every `duogen` command module shares: the help formatter, `--seed` / `--json`,
a command and a command group.

`cli.py` builds the parser; a command area with several subcommands (edit, personalize, control, classify)
keeps its parser wiring and handlers in its own `cli_<area>.py`, which imports this module and never `cli.py`.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

Handler = Callable[[argparse.Namespace], "dict[str, Any] | None"]


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same result")
    p.add_argument("--json", action="store_true", help="print a machine-readable JSON summary on stdout")
    return p


def command(sub: Any, name: str, help: str, func: Handler, description: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name,
        help=help,
        description=description or help,
        parents=[common()],
        formatter_class=Formatter,
    )
    p.set_defaults(func=func)
    return p


def group(sub: Any, name: str, help: str) -> Any:
    p = sub.add_parser(name, help=help, description=help, formatter_class=Formatter)
    p.set_defaults(func=None, _group_parser=p)
    return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
