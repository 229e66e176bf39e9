"""`python -m services.common.datasets`: see cli.py."""

from services.common.datasets.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
