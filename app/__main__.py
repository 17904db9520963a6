"""`python -m app` is the `bridgekeeper` command."""

from app.cli import main

raise SystemExit(main())
