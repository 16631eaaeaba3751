"""`python -m pagewalk` runs the command line."""

from pagewalk.cli import main

main()
