"""The ``twotower`` command: parse the arguments, call the library, map its errors to exit codes.

Every command is listed once, in :data:`COMMANDS`, with its help line and the function that declares its
arguments. ``twotower --help`` prints that list without importing any command module, and a command imports
only its own module (``cli/data.py``, ``cli/train.py``, ``cli/index.py``, ``cli/serve.py``), which imports
the library inside the function it runs: ``twotower prepare`` and ``twotower synth`` never load torch.

Exit codes are decided in one place, :func:`run`, by :func:`twotower.errors.exit_code`: 0 success; 2 an
expected failure (usage, config, input, artifact, store, or an OS error such as a full disk), reported as one
``error:`` line; 130 Ctrl-C; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ..errors import exit_code


class Command(NamedTuple):
    """One entry of the command list: where its arguments are declared and what ``--help`` says of it."""

    module: str  # a module of this package, imported only when the command is chosen
    declare: str  # its function ``(parser) -> None`` that adds the arguments and sets ``func``
    help: str


#: The command list, in the order ``twotower --help`` shows it.
COMMANDS: dict[str, Command] = {
    "prepare": Command("data", "declare_prepare", "logs -> time-ordered sequences, splits and hashed ids"),
    "synth": Command("data", "declare_synth", "write a synthetic log (Zipf items, power-law users)"),
    "train": Command("train", "declare_train", "train the two towers on a prepared dataset"),
    "evaluate": Command("train", "declare_evaluate", "full-corpus evaluation of a run beside the popularity baseline"),
    "export": Command("train", "declare_export", "encode every item with the candidate tower"),
    "mine-negatives": Command(
        "train", "declare_mine_negatives", "hard negatives for every training example from a run's model"
    ),
    "train-ranker": Command("train", "declare_train_ranker", "a second-stage ranker on the retriever's candidates"),
    "index": Command("index", "declare_index", "build / publish / roll back ANN indexes"),
    "refresh-states": Command(
        "serve", "declare_refresh_states", "encode users with new activity into the feature store"
    ),
    "serve-prepare": Command(
        "serve", "declare_serve_prepare", "assemble an artifact root from a hybrid run (export, states, index)"
    ),
    "publish-ranker": Command(
        "serve", "declare_publish_ranker", "put a trained ranker into an artifact root (rerank requests use it)"
    ),
    "serve": Command("serve", "declare_serve", "online retrieval service (FastAPI/uvicorn) over an artifact root"),
}


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser, with the arguments of ``commands`` declared (default: every command).

    Every command is listed either way (``twotower --help`` needs only the table); declaring a command's
    arguments imports its module, so :func:`main` declares only the one on its command line.
    """
    p = argparse.ArgumentParser(prog="twotower", description="Two-tower retrieval: logs -> towers -> index -> service.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    declared = set(COMMANDS if commands is None else commands)
    for name, cmd in COMMANDS.items():
        parser = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if name in declared:
            module = importlib.import_module(f"{__name__}.{cmd.module}")
            getattr(module, cmd.declare)(parser)
    return p


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command named on ``argv``: its first word that is not an option (the top level has only flags)."""
    return next((a for a in argv if not a.startswith("-")), None)


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; the one place where an exception becomes an exit status.

    A command may set ``on_interrupt`` (a function of ``args`` returning one line) to say more than
    "did not finish" on Ctrl-C, e.g. where training's last checkpoint is.
    """
    try:
        return int(args.func(args) or 0)
    except (Exception, KeyboardInterrupt) as exc:
        code = exit_code(exc)
        if code is None:  # not an error we expect: a bug, keep its traceback
            raise
        if isinstance(exc, KeyboardInterrupt):
            hint = getattr(args, "on_interrupt", None)
            print(hint(args) if hint else f"interrupted: {args.command} did not finish", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``twotower``: parse ``argv`` (default ``sys.argv[1:]``), run the command, return its status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m twotower -- train --run ...`: the `--` keeps torchrun's own parser
        argv = argv[1:]  # from reading our flags (it rejects `--run` as an abbreviation of its `--run-path`)
    command = chosen_command(argv)
    args = build_parser([command] if command in COMMANDS else []).parse_args(argv)
    args.argv = argv  # what `train --nproc` hands to torchrun as it is
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run(args)
