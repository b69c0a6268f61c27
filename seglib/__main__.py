"""``python -m seglib ...`` runs the command-line interface."""

from seglib.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
