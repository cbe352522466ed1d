"""The `pixelrec` command: a thin shell that parses arguments and calls library functions.

Each sub-command lives in `pixelrec.commands.<name>` and provides `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so `pixelrec --help` stays
fast and an optional dependency matters only to the command that needs it.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import sys
from typing import Sequence

from pixelrec import commands, threads
from pixelrec.commands import in_flags
from pixelrec.errors import UserError
from pixelrec.version import __version__

#: Each module of `pixelrec.commands` is a sub-command: its SUMMARY, in its ORDER (see `_discover`).


def _command_module(name: str):
    return importlib.import_module(f"pixelrec.commands.{name}")


def _discover() -> dict[str, str]:
    """Sub-command name -> summary, from the modules of `pixelrec.commands` (each imports no library
    module at its top level, so this stays fast)."""
    modules = [_command_module(info.name) for info in pkgutil.iter_modules(commands.__path__)]
    return {m.__name__.rpartition(".")[2]: m.SUMMARY for m in sorted(modules, key=lambda m: m.ORDER)}


COMMANDS = _discover()


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default where it has one and its text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        # a switch's default is its absence (prepare's --no-images stores images=False, default True)
        unset = default is None or default is False or default is argparse.SUPPRESS or default == [] \
            or action.nargs == 0
        shown = action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)
        if unset or not shown or "default" in text.lower():
            return action.help
        return f"{text} (default: %(default)s)".strip()


def _config_names() -> str:
    from pixelrec.packaged import preset_names, profile_names

    return f"presets {', '.join(preset_names())}; profiles {', '.join(profile_names())}"


def _name_config_choices(parser: argparse.ArgumentParser) -> None:
    """`--config` takes a YAML file or a packaged name: its help lists the names, and the command's
    help says where the values of options left out come from."""
    for action in parser._actions:
        if "--config" in action.option_strings:
            action.help = f"{action.help or 'YAML file(s)'}; packaged: {_config_names()}"
            parser.epilog = ("Options without a default shown take the configuration's value: the packaged "
                             "settings of the model, item kind and encoder, then --config, then --set "
                             "(`pixelrec train --print-config ...` shows them).")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelrec", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter,
                                     epilog=f"Packaged configurations for --config: {_config_names()}. "
                                            "`pixelrec COMMAND --help` shows a command's options and their defaults.")
    parser.add_argument("--version", action="version", version=f"pixelrec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        command_parser = sub.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter)
        if only == name:
            _command_module(name).add_arguments(command_parser)
            _name_config_choices(command_parser)
            parser.set_defaults(flags=flag_names(command_parser))
    return parser


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Parameter name -> the command's option that sets it, read from its argparse actions (an
    option's `dest` is the library's parameter name)."""
    return {action.dest: max(action.option_strings, key=len) for action in parser._actions
            if action.option_strings and action.dest not in ("help", "version")}


#: Where one option of a command stands for several library parameters: the library's words for them ->
#: the words `in_flags` then writes as that option (`pixelrec train --resume RUN` is resume=True, out=RUN).
ALIASES: dict[str, dict[str, str]] = {"train": {"resume=True with out=": "resume="}}

def _rank_prefix() -> str:
    """Under torchrun every rank may report: say which one."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f"[rank {os.environ.get('RANK', '?')} of {world}] " if world not in ("", "1") else ""


#: What happened and what to do, for the system errors a user can cure.
OS_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free some space there or write somewhere else, then run again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write somewhere else, then run again"),
    errno.EACCES: ("permission denied", "check the permissions of the path and its folders, or choose another path"),
    errno.EPERM: ("operation not permitted", "check the permissions of the path and its folders, or another path"),
    errno.EROFS: ("read-only file system", "write somewhere else"),
    errno.EISDIR: ("is a folder", "give the path of a file"),
    errno.ENOTDIR: ("a part of the path is not a folder", "check the path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or use fewer workers"),
    errno.EIO: ("input/output error", "check the disk or network file system, then run again"),
}


def os_error_line(err: OSError, out: object = None) -> str | None:
    """One line for a system error a user can cure (disk full, permissions, ...): the path (else the
    command's --out), what happened and what to do; None for other errors, which keep their traceback."""
    if err.errno not in OS_ERRORS:
        return None
    what, todo = OS_ERRORS[err.errno]
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    if paths:
        return f"{' -> '.join(paths)}: {what}; {todo}"
    return f"{what}{f' (writing {out})' if out else ''}; {todo}"


def main(argv: Sequence[str] | None = None) -> int:
    threads.limit_idle_spin()  # before any command imports torch, which reads it once
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    args: argparse.Namespace | None = None
    try:
        parser = build_parser(only=chosen)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        from pixelrec import progress

        with progress.console():  # the library's log lines on stderr; a command's stdout stays its own
            return int(_command_module(args.command).run(args) or 0)
    except UserError as err:
        aliases = ALIASES.get(getattr(args, "command", None) or "", {})
        print(f"pixelrec: error: {_rank_prefix()}{in_flags(str(err), getattr(args, 'flags', {}), aliases)}",
              file=sys.stderr)
        return 2
    except OSError as err:
        line = os_error_line(err, getattr(args, "out", None))
        if line is None:
            raise
        print(f"pixelrec: error: {_rank_prefix()}{line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pixelrec: interrupted", file=sys.stderr)
        return 130
