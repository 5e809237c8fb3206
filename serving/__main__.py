"""``python -m serving PATH [OPTIONS]``: the same as ``blackbox serve PATH [OPTIONS]``.

It runs the command through blackbox's own ``main``, so errors end the same
way: one line on stderr and the error class's exit code.
"""

import sys

from blackbox.cli import cli, main

from .cli import serve

cli.add_command(serve)
sys.exit(main(["serve", *sys.argv[1:]]))
