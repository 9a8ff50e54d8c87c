"""``python -m storekeeper``: the command line."""

from .cli import main

raise SystemExit(main())
