"""``python -m eg [CONFIG]`` and ``python -m eg check CONFIG``: see ``eg.cli``."""

from eg.cli import main

raise SystemExit(main())
