"""`python -m pixelrec` runs the command-line tool."""

from pixelrec.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
