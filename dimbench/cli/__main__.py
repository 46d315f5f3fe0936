"""``python -m dimbench.cli ...`` (torchrun's ``-m dimbench.cli``): the command line."""

from dimbench.cli.program import main

main()
