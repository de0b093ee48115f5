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


class _Seed(argparse.Action):
    """`--seed N`, remembering that it was given: a training command's config may name its own seed."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.seed_given = True


def common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--seed", type=int, default=0, action=_Seed,
                   help="random seed; the same seed gives the same result (a training command or world without"
                        " --seed takes the seed its config file or train.seed= / seed= override names)")
    p.set_defaults(seed_given=False)
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


def seed_flag(a: argparse.Namespace) -> int | None:
    """The `--seed` value when the command line gave it, else None: a config's own seed then decides."""
    return a.seed if getattr(a, "seed_given", False) else None


def seed_or_override(a: argparse.Namespace, overrides: Any, key: str = "train.seed") -> int:
    """One seed for a command that seeds more than its training run: `--seed` when given, else a `key=N` among
    the overrides, else the flag's default (a flag and an override that disagree are refused by the recipe)."""
    from .config import override_seeds

    if not getattr(a, "seed_given", False):
        for _, value in override_seeds(overrides, key):
            if value is not None and value >= 0:
                return value
    return a.seed
