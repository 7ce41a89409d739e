"""The scalar types every schema field uses, and the base of every model: strict, one-line, bounded."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict
from pydantic.functional_validators import AfterValidator
from pydantic.types import AllowInfNan, StrictBool, StrictFloat, StrictInt, StrictStr

NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a value that becomes one line of a unit, env or supervisord file may not hold: control
# characters (a line break would start a new directive), Unicode line separators, lone surrogates
# (they cannot be written as UTF-8) and bidi overrides (they make a diff read differently).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
_UNSAFE_NAMES = {"\n": "a line break", "\r": "a carriage return", "\x00": "a NUL", "\t": "a tab"}
# A value vLLM's parser would read as a flag of its own (--port=1, -O3) rather than as a value.
FLAG_LIKE = re.compile(r"^-[A-Za-z-]")


def _one_line(value: str) -> str:
    bad = UNSAFE.search(value)
    if bad is not None:
        char = bad.group()
        name = _UNSAFE_NAMES.get(char) or f"the character U+{ord(char):04X}"
        raise ValueError(f"contains {name} at position {bad.start()}: one line of printable text expected")
    return value


def _int64(value: int) -> int:
    # A validator, not Field(ge=, le=): those would replace each field's own bounds.
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"{value} does not fit in 64 bits")
    return value


# Every scalar field uses these: no coercion (true is not 1, 1.5 is not 1, 8000 is not "8000"),
# and every string is one printable line. tests/unit/test_hostile.py checks no field escapes them.
Text = Annotated[StrictStr, AfterValidator(_one_line)]
Int = Annotated[StrictInt, AfterValidator(_int64)]
Float = Annotated[StrictFloat, AllowInfNan(False)]  # a strict float still takes an int, never a bool
Bool = StrictBool


def _venv(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"venv must be an absolute path on the host, got {value!r}")
    return value


Venv = Annotated[Text, AfterValidator(_venv)]  # a Python venv on the host


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
