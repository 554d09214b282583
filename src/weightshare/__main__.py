"""``python -m weightshare check PATH``: see :mod:`weightshare._checkpoint._cli`."""

from weightshare._checkpoint._cli import main

raise SystemExit(main())
