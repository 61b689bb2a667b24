"""``python -m binder.cli``: the ``binder`` command."""
from binder.cli import main

raise SystemExit(main())
