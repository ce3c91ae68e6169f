"""One registry type for the project's families of interchangeable pieces (stylegan2-ada's
``metric_main`` style): architectures, losses, optimisers, training methods, batch strategies,
metrics and their families, presets.

A :class:`Registry` maps a name to an entry, in registration order. Looking up a name it does not
hold raises :class:`UnknownName`, a :class:`~storage.errors.SubsampleError` (the CLI prints it as
one line and exits 2) whose message has the same shape for every registry::

    <stage>: unknown <kind> 'x' (did you mean 'y'?); registered: a, b, c

pydantic validators that check a registered name raise ``ValueError(registry.message(name))``
(:meth:`Registry.validate`), so the message inside a validation error is the same text.

It imports only ``storage``: it sits at the bottom of ``pipeline``.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterable, Iterator, Optional, TypeVar

from storage.errors import SubsampleError, did_you_mean

T = TypeVar("T")
_MISSING = object()


def unknown_message(kind: str, name: Any, choices: Iterable[str]) -> str:
    """``unknown <kind> 'x' (did you mean 'y'?); registered: a, b, c``: the one message every
    registry gives for a name it does not hold (the nearest name first, like the unknown-setting
    messages, so a long list does not bury it)."""
    choices = [str(c) for c in choices]
    return (
        f"unknown {kind} {str(name)!r}{did_you_mean(str(name), choices)}; registered: {', '.join(choices) or '(none)'}"
    )


class UnknownName(SubsampleError):
    """A name no entry of a registry has. ``kind``, ``name`` and ``choices`` are kept for callers
    that want to say more."""

    def __init__(self, stage: str, kind: str, name: Any, choices: Iterable[str]):
        self.kind, self.name, self.choices = kind, str(name), tuple(str(c) for c in choices)
        super().__init__(stage, unknown_message(kind, name, self.choices))


def first_line(text: Optional[str]) -> str:
    """A docstring's or description's first paragraph as one line ('' if none)."""
    paragraph = (text or "").strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines() if line.strip())


def _name_attr(entry: Any) -> str:
    name = getattr(entry, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"{entry!r} has no string .name: register it with name=...")
    return name


def _description_attr(entry: Any) -> str:
    """An entry's one-line description: its ``description`` attribute, else its docstring's first paragraph."""
    text = getattr(entry, "description", None)
    if not isinstance(text, str) or not text:
        text = getattr(entry, "__doc__", None)
    return first_line(text)


class Registry(Generic[T]):
    """Name -> entry, in registration order.

    ``kind`` names what it holds in messages ("architecture", "batch strategy"); ``stage`` is the
    stage an unknown name is reported under (a lookup may name another). Entries are registered
    with :meth:`register`, as a call (``REG.register(entry)``, named by ``entry.name``, or
    ``REG.register(fn, name="x")``) or a decorator (``@REG.register`` on a class with a ``name``
    attribute, ``@REG.register(name="x")`` on a function)."""

    def __init__(
        self,
        kind: str,
        *,
        stage: str,
        name_of: Callable[[Any], str] = _name_attr,
        describe_of: Callable[[Any], str] = _description_attr,
    ):
        self.kind = kind
        self.stage = stage
        self._name_of = name_of
        self._describe_of = describe_of
        self._entries: dict[str, T] = {}

    # --- registering -------------------------------------------------------------------------

    def register(self, entry: Optional[T] = None, /, *, name: Optional[str] = None) -> Any:
        """Register ``entry`` (under ``name``, default ``entry.name``) and return it; without an
        entry, a decorator that does so. A name registered twice is a programming error."""
        if entry is None:
            return lambda e: self.register(e, name=name)
        key = name if name is not None else self._name_of(entry)
        if key in self._entries:
            raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[key] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove and return the entry ``name`` (tests that register a throw-away entry)."""
        return self._entries.pop(self.check(name))

    def __setitem__(self, name: str, entry: T) -> None:
        """Set (or replace) the entry ``name``: what ``monkeypatch.setitem`` does in tests; code
        registers with :meth:`register`, which refuses a name twice."""
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        self.unregister(name)

    # --- looking up --------------------------------------------------------------------------

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def get(self, name: str, default: Any = _MISSING, *, stage: Optional[str] = None) -> T:
        """The entry ``name``; when there is none, ``default`` if one is given (as ``dict.get``),
        else :class:`UnknownName` (reported under ``stage``, default the registry's)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            if default is not _MISSING:
                return default
            raise UnknownName(stage or self.stage, self.kind, name, self._entries) from None

    def check(self, name: str, *, stage: Optional[str] = None) -> str:
        """``name`` when it is registered, else :class:`UnknownName`."""
        self.get(name, stage=stage)
        return name

    def message(self, name: str) -> str:
        """The unknown-name message for ``name`` (without the stage prefix)."""
        return unknown_message(self.kind, name, self._entries)

    def validate(self, name: str) -> str:
        """For pydantic validators: ``name`` when registered, else ``ValueError`` carrying
        :meth:`message` (pydantic wraps ValueErrors into its ValidationError)."""
        if name not in self:
            raise ValueError(self.message(name))
        return name

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # an unhashable value is no name
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def keys(self):
        return self._entries.keys()

    def values(self):
        return self._entries.values()

    def items(self):
        return self._entries.items()

    def describe(self) -> list[tuple[str, str]]:
        """``[(name, one-line description), ...]`` in registration order: an entry's
        ``description`` attribute, else its docstring's first paragraph (docs tables are made of it)."""
        return [(k, self._describe_of(v)) for k, v in self._entries.items()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
