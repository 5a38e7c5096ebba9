"""`python -m anekit` runs the command line."""

from .cli import main

main()
