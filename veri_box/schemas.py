"""msgspec structs and parameter types shared by several resources."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

import msgspec
from litestar.params import Parameter

T = TypeVar("T")

ReadLimit = Annotated[int, Parameter(ge=1, le=100, description="Maximum number of items to return.")]
After = Annotated[str | None, Parameter(max_length=100, description="Id of the last item of the previous page.")]


class ListOf(msgspec.Struct, Generic[T]):
    data: list[T]
    has_more: bool
    object: str = "list"


class Deleted(msgspec.Struct):
    id: str
    object: str
    deleted: bool = True
