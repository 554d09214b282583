"""The metadata that :func:`weightshare.save` records (read without importing torch)."""

from __future__ import annotations

__all__ = ["GROUPS_KEY", "parse_groups"]

GROUPS_KEY = "weightshare.shared_groups"


def parse_groups(groups: object) -> list[list[str]]:
    """Validate recorded groups: a list of lists of str.

    Examples
    --------
    >>> from weightshare._format import parse_groups
    >>> parse_groups([["emb.weight", "head.weight"]])
    [['emb.weight', 'head.weight']]
    >>> parse_groups({"emb.weight": "head.weight"})
    Traceback (most recent call last):
    ...
    ValueError: its 'weightshare.shared_groups' entry is not a list of lists of names
    """
    if not isinstance(groups, list) or not all(
        isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups
    ):
        raise ValueError(f"its {GROUPS_KEY!r} entry is not a list of lists of names")
    return groups
