"""`python -m buttress` runs the `buttress` command."""

from buttress.cli import main

main()
