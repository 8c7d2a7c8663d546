"""``pdnsr-prepare coco|faces|benchmark ...``, and each command alone as ``scripts/data_preparation/prepare_*.py``.

Each command is a module with ``NAME``, ``SCRIPT`` (its script's file name, recorded in ``prepare_info.json``),
``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args)``; this module only parses and dispatches, and reports
user errors through :func:`pdnsr.tools.cli.run_main` (one line, exit status 2).
"""

import argparse

from pdnsr.errors import run_main
from pdnsr.tools.prepare import benchmark, coco, faces

COMMANDS = {module.NAME: module for module in (coco, faces, benchmark)}
PROG = 'pdnsr-prepare'


def build_parser(prog=PROG):
    """The ``pdnsr-prepare`` parser: one sub-command per module of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=prog, description='Prepare HR/LR image folders, image LMDBs and prompt stores (docs/data_preparation.md).'
    )
    commands = parser.add_subparsers(dest='command', required=True, metavar='{' + ','.join(COMMANDS) + '}')
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(sub)
    return parser


def main(argv=None):
    """``pdnsr-prepare``: parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status."""

    def body():
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command].run(args)

    return run_main(body, PROG)


def script_main(name, argv=None):
    """One command alone, as its script runs it: usage and error lines start with the script's name
    (``prepare_coco.py: error: ...``); returns the exit status."""
    module = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=module.SCRIPT, description=module.DESCRIPTION)
    module.add_arguments(parser)
    return run_main(lambda: module.run(parser.parse_args(argv)), module.SCRIPT)
