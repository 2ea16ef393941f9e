"""``python -m maas_tune`` runs the command line."""

from .cli import main

raise SystemExit(main())
