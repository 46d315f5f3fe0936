"""``python -m dimbench ...``: the command line, from an install or a checkout."""

from dimbench.cli.program import main

main()
