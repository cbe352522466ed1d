"""One schema for every configuration value: its type annotation.

A key of a configuration section (a dataclass field) and a parameter of a component (a backbone, item
encoder or loss constructor) are checked the same way: the annotation gives the type, and
`Annotated[T, Range(...)]` adds the allowed range. So a component declares its own hyper-parameters,
their types and their ranges in its signature, in one place, and nothing else repeats them. A parameter
annotated with a dataclass (a tower's settings) is a nested section, each of its fields checked alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin

from pixelrec.errors import UserError


@dataclass(frozen=True)
class Range:
    """Allowed interval of a number; open ends exclude the bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __str__(self) -> str:
        low = "" if self.low is None else f"{_number(self.low)} {'<' if self.low_open else '<='} "
        high = "" if self.high is None else f" {'<' if self.high_open else '<='} {_number(self.high)}"
        return f"{low}x{high}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


POSITIVE = Range(0, low_open=True)  # rates, sizes in real units
AT_LEAST_ONE = Range(1)  # counts of things that must exist (batch size, epochs, layers)
NON_NEGATIVE = Range(0)  # decay, workers, optional layers
FRACTION = Range(0, 1, high_open=True)  # dropout: 1 would drop everything
PROBABILITY = Range(0, 1, low_open=True)  # a share that must be drawn from: (0, 1]

#: Upper bounds for sizes that multiply memory: beyond them a run is killed for memory before it says anything.
MAX_SEQUENCE = 1024  # items per training sequence (the paper: 10; long-sequence work: a few hundred)
MAX_IMAGE_SIDE = 1024  # pixels per side of a stored or encoded image (the paper's largest input: 448)
SEQUENCE_LENGTH = Range(1, MAX_SEQUENCE)
IMAGE_SIDE = Range(8, MAX_IMAGE_SIDE)

Positive = Annotated[float, POSITIVE]
PositiveInt = Annotated[int, AT_LEAST_ONE]
NonNegative = Annotated[float, NON_NEGATIVE]
NonNegativeInt = Annotated[int, NON_NEGATIVE]
Dropout = Annotated[float, FRACTION]
SequenceLength = Annotated[int, SEQUENCE_LENGTH]
ImageSide = Annotated[int, IMAGE_SIDE]


def check(value: Any, annotation: Any, where: str) -> Any:
    """`value` checked against `annotation` (type, then range), converting the safe case int -> float.
    Every problem is one UserError line starting with `where`."""
    origin = get_origin(annotation)
    if annotation is Any:
        return value
    if origin is Annotated:
        inner, *extras = get_args(annotation)
        value = check(value, inner, where)
        for rule in extras:
            if isinstance(rule, Range) and isinstance(value, (int, float)) and not rule.allows(value):
                raise UserError(f"{where}: {value!r} is out of range (allowed: {rule})")
        return value
    if origin is Literal:
        if value not in get_args(annotation):
            choices = ", ".join(repr(a) for a in get_args(annotation))
            raise UserError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        failures = []
        for option in options:
            if option is type(None):
                continue
            try:
                return check(value, option, where)
            except UserError as err:
                failures.append(err)
        ranged = [err for err in failures if "out of range" in str(err)]  # right type, wrong value: say so
        if ranged:
            raise ranged[0]
        raise UserError(f"{where}: {value!r} does not fit {type_name(annotation)}")
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        (inner,) = get_args(annotation) or (Any,)
        return [check(v, inner, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return value
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _check_section(value, annotation, where)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if annotation in (int, float, str, bool):
        if isinstance(value, bool) and annotation is not bool or not isinstance(value, annotation):
            raise UserError(f"{where}: expected {annotation.__name__}, got {value!r}")
        if annotation is float and not math.isfinite(value):
            raise UserError(f"{where}: {value!r} is not a finite number")
    return value


def _check_section(value: Any, cls: type, where: str) -> Any:
    """A mapping checked field by field into the dataclass `cls` (an instance passes as it is)."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping, got {value!r}")
    annotations = hints(cls)
    types = {f.name: annotations[f.name] for f in dataclasses.fields(cls)}
    for key in value:
        if key not in types:
            close = difflib.get_close_matches(str(key), list(types), n=1)
            raise UserError(f"{where}: unknown key {key}" + (f"; did you mean {close[0]!r}?" if close else ""))
    return cls(**{key: check(item, types[key], f"{where}.{key}") for key, item in value.items()})


def type_name(annotation: Any) -> str:
    """A readable name of an annotation, ranges included (`int (1 <= x)`)."""
    if get_origin(annotation) is Annotated:
        inner, *extras = get_args(annotation)
        ranges = [str(e) for e in extras if isinstance(e, Range)]
        return f"{type_name(inner)} ({', '.join(ranges)})" if ranges else type_name(inner)
    if isinstance(annotation, type):
        return annotation.__name__
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(annotation))
    return str(annotation).replace("typing.", "")


def hints(obj: Any) -> dict[str, Any]:
    """Type hints of a dataclass or a callable, with their ranges (Annotated kept)."""
    return typing.get_type_hints(obj, include_extras=True)
