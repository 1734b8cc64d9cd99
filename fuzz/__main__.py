"""``python -m fuzz``: see :mod:`fuzz.run`."""

from fuzz.run import main

raise SystemExit(main())
