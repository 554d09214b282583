"""``python -m weightshare check PATH``: see :mod:`weightshare._cli`."""

from weightshare._cli import main

raise SystemExit(main())
