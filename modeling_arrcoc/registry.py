"""An ordered table of named entries (the selection methods in `selection.py`, the loss terms in `losses.py`), with
read-only views of the names and maps other modules derive from it.

The views are read at each use, not copied at import: the config, the trainer and the evaluation import them once,
so an entry registered later (a newcomer's method, a test's toy) is in every one of them.
"""

from collections.abc import Mapping, Sequence
from contextlib import contextmanager


class Registry:
    """Entries with a `name`, in registration order (the order every derived list and sum follows)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries = {}

    def register(self, entry):
        """Add `entry`; a name already taken is an error (replacing a method silently would change checkpoints)."""
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered.")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str):
        del self._entries[name]

    @contextmanager
    def registered(self, entry):
        """`entry` in the table for the `with` block only (a test's toy)."""
        self.register(entry)
        try:
            yield entry
        finally:
            self.unregister(entry.name)

    def __getitem__(self, name: str):
        return self._entries[name]

    def __contains__(self, name) -> bool:
        return name in self._entries

    def entries(self, keep=None) -> list:
        return [entry for entry in self._entries.values() if keep is None or keep(entry)]

    def names(self, keep=None) -> "NameView":
        """The names of the entries that pass `keep`, as a live tuple-like view."""
        return NameView(lambda: tuple(entry.name for entry in self.entries(keep)))

    def mapping(self, key, value, keep=None) -> "MapView":
        """{key(entry): value(entry)} over the entries that pass `keep`, as a live read-only view."""
        return MapView(lambda: {key(entry): value(entry) for entry in self.entries(keep)})


class NameView(Sequence):
    """A tuple of names computed from the table at each use; compares equal to the tuple it currently is."""

    def __init__(self, compute):
        self._compute = compute

    def __getitem__(self, index):
        return self._compute()[index]

    def __len__(self) -> int:
        return len(self._compute())

    def __iter__(self):
        return iter(self._compute())

    def __contains__(self, name) -> bool:
        return name in self._compute()

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and not isinstance(other, str) and tuple(self) == tuple(other)

    __hash__ = None  # it changes with the table

    def __add__(self, other) -> tuple:
        return tuple(self) + tuple(other)

    def __repr__(self) -> str:
        return repr(self._compute())


class MapView(Mapping):
    """A read-only dict computed from the table at each use."""

    def __init__(self, compute):
        self._compute = compute

    def __getitem__(self, key):
        return self._compute()[key]

    def __iter__(self):
        return iter(self._compute())

    def __len__(self) -> int:
        return len(self._compute())

    def __repr__(self) -> str:
        return repr(self._compute())


__all__ = ["MapView", "NameView", "Registry"]
