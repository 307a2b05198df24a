"""`python -m pyprobtf ...`: the same as the `pyprobtf` command."""

from pyprobtf.cli import main

raise SystemExit(main())
