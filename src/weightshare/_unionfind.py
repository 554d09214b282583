"""One union-find (disjoint sets) for the whole library (internal).

Ties are an equivalence: names of one parameter, names that share a byte of
storage, modules that hold one tied parameter, keys recorded as one group. Every
place that joins such pairs into groups uses :class:`UnionFind`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["UnionFind", "join"]

T = TypeVar("T", bound=Hashable)


class UnionFind(Generic[T]):
    """Disjoint sets of hashable items, with path halving (no recursion).

    Sets are listed in the order their first item was added, and each set's items
    in the order they were added, so results are deterministic.

    Examples
    --------
    >>> from weightshare._unionfind import UnionFind
    >>> sets = UnionFind(["a", "b", "c", "d"])
    >>> sets.union("c", "a")
    >>> sets.find("c") == sets.find("a"), sets.find("b") == sets.find("a")
    (True, False)
    >>> sets.groups()
    [['a', 'c'], ['b'], ['d']]
    """

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._parent: dict[T, T] = {}
        self._order: dict[T, int] = {}  # item -> when it was added
        for item in items:
            self.add(item)

    def add(self, item: T) -> None:
        """Add ``item`` as a set of its own (nothing happens if it is known)."""
        if item not in self._parent:
            self._parent[item] = item
            self._order[item] = len(self._order)

    def __contains__(self, item: object) -> bool:
        return item in self._parent

    def find(self, item: T) -> T:
        """The representative of ``item``'s set (``item`` is added if unknown)."""
        self.add(item)
        parent = self._parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: T, b: T) -> None:
        """Merge the sets of ``a`` and ``b``; the earlier-added root stays root."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return
        if self._order[root_b] < self._order[root_a]:
            root_a, root_b = root_b, root_a
        self._parent[root_b] = root_a

    def groups(self) -> list[list[T]]:
        """Every set, as a list, in order of first item."""
        found: dict[T, list[T]] = {}
        for item in self._parent:
            found.setdefault(self.find(item), []).append(item)
        return list(found.values())


def join(groups: Iterable[Iterable[T]]) -> list[list[T]]:
    """Groups that share an item merged into one (order of first appearance).

    Examples
    --------
    >>> from weightshare._unionfind import join
    >>> join([["a", "b"], ["c"], ["b", "d"]])
    [['a', 'b', 'd'], ['c']]
    """
    sets: UnionFind[T] = UnionFind()
    for group in groups:
        members = list(group)
        for item in members:
            sets.add(item)
        for item in members[1:]:
            sets.union(members[0], item)
    return sets.groups()
