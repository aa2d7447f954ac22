"""The topology reference (docs/topology.md) generated from the specs themselves, so it stays true."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from streamfed.topology.spec import Topology


def _type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(ann))
    if origin is typing.Annotated:
        return _type_name(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(ann))
    if origin in (list, dict):
        args = ", ".join(_type_name(a) for a in typing.get_args(ann))
        return f"{origin.__name__}[{args}]"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann)).replace("Path", "path")


def _constraint(m: Any) -> str:
    for attr, sym in (
        ("gt", ">"),
        ("ge", ">="),
        ("lt", "<"),
        ("le", "<="),
        ("min_length", "at least"),
        ("pattern", "matches"),
    ):
        v = getattr(m, attr, None)
        if v is not None:
            return f"{sym} {v}" if attr != "pattern" else f"matches `{v}`"
    return ""


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def walk(m: type[BaseModel]) -> None:
        if m in seen:
            return
        seen.append(m)
        for f in m.model_fields.values():
            stack = [f.annotation]
            while stack:
                a = stack.pop()
                if isinstance(a, type) and issubclass(a, BaseModel):
                    walk(a)
                stack.extend(typing.get_args(a))

    walk(root)
    return seen


def reference_markdown() -> str:
    out = []
    for model in _models(Topology):
        out.append(f"### `{model.__name__}`\n")
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        if doc:
            out.append(doc + "\n")
        out.append("| field | type | default | meaning |\n|---|---|---|---|")
        for name, f in model.model_fields.items():
            if f.default is PydanticUndefined and f.default_factory is None:
                default = "**required**"
            elif f.default_factory is not None:
                default = f"`{f.default_factory()!r}`"  # type: ignore[call-arg]
            elif isinstance(f.default, BaseModel):
                default = "(defaults)"
            else:
                default = f"`{f.default!r}`"
            constraints = ", ".join(c for m in f.metadata if (c := _constraint(m)))
            meaning = (f.description or "") + (f" ({constraints})" if constraints else "")
            out.append(f"| `{name}` | {_type_name(f.annotation)} | {default} | {meaning} |")
        out.append("")
    return "\n".join(out)
