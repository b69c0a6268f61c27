"""``python -m seglib ...`` runs the command-line interface."""

from seglib.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
