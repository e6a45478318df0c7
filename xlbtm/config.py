"""Typed command configs: a command's settings are one dataclass, and its flags are generated from it.

A field declared with `option(...)` is a flag `--field-name` (or `flag=`, plus `aliases`): its default, help,
choices (from a `Literal[...]` type, each explained by `choices_help`) and parsing live on the field, once.
`add_config_args(parser, Cls)` adds the flags, `config_from_args(Cls, args)` builds the config back from the
parsed flags, and `render_command(stage, config)` writes the command line that gives this config, so a
pipeline that builds configs in code logs what a user would type (and never parses a command line back).
TrainingSettings' `setting(...)` is this with a help group (xlbtm.train.config)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

MISSING = dataclasses.MISSING


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    group: str | None = None,
    aliases: tuple[str, ...] = (),
    flag: str | None = None,
    type: Callable[[str], Any] | None = None,
    nargs: str | None = None,
    metavar: str | None = None,
    choices_help: dict[str, str] | None = None,
    exclusive: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
    parse: Callable[[Any], Any] | None = None,
    render: Callable[[Any], list[str]] | None = None,
    exclusive_required: bool = True,
    action: Literal["append"] | None = None,
):
    """A dataclass field that is also a command-line flag.

    `flag`: the flag's name when it is not `--<field-name>` (e.g. `--temperature` for `temperatures`);
    `aliases`: other names accepted (the c-BTM / metaseq spellings); `group`: the --help section; `type`,
    `nargs`, `metavar`: argparse's; `parse`: applied to the parsed value (e.g. flattening repeated comma
    lists); `render`: the value as command-line words (default: str of it); `exclusive`: fields sharing this
    name form a mutually exclusive group, one of which must be given unless `exclusive_required` is False;
    `action="append"`: a repeatable flag collecting a list; `choices_help`: one explanation per Literal
    choice."""
    meta = {
        "help": help,
        "group": group,
        "flags": aliases,
        "flag": flag,
        "type": type,
        "nargs": nargs,
        "metavar": metavar,
        "choices_help": choices_help,
        "exclusive": exclusive,
        "parse": parse,
        "render": render,
        "exclusive_required": exclusive_required,
        "action": action,
    }
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def is_option(f: dataclasses.Field) -> bool:
    return "help" in f.metadata and "flags" in f.metadata


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def literal_choices(hint: Any) -> tuple | None:
    hint = _strip_optional(hint)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def _help(f: dataclasses.Field, choices: tuple | None) -> str:
    text = f.metadata["help"]
    explained = f.metadata.get("choices_help")
    if explained and choices:
        text += ". " if text else ""
        text += "; ".join(f"{c}: {explained[c]}" for c in choices if c in explained)
    return text


def add_config_args(
    parser: argparse.ArgumentParser, cls: type, groups: dict | None = None, *, skip: typing.Collection[str] = ()
) -> dict:
    """One flag per `option` field of `cls` (but those named in `skip`: a command that sets them itself).
    Returns the help groups by name (a script may add its own flags to them)."""
    groups = {} if groups is None else groups
    hints = typing.get_type_hints(cls)
    exclusive: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not is_option(f) or f.name in skip:
            continue
        meta = f.metadata
        target: Any = parser
        if meta.get("group"):
            target = groups.get(meta["group"]) or groups.setdefault(
                meta["group"], parser.add_argument_group(meta["group"])
            )
        if meta.get("exclusive"):
            if meta["exclusive"] not in exclusive:
                exclusive[meta["exclusive"]] = target.add_mutually_exclusive_group(
                    required=meta.get("exclusive_required", True)
                )
            target = exclusive[meta["exclusive"]]
        names = [flag_name(f), *meta["flags"]]
        choices = literal_choices(hints[f.name])
        default = default_of(f)
        kw: dict[str, Any] = {"dest": f.name, "help": _help(f, choices)}
        if _strip_optional(hints[f.name]) is bool and meta.get("type") is None:
            target.add_argument(*names, action="store_true", default=bool(default), **kw)
            continue
        if default is MISSING:
            kw["required"] = not meta.get("exclusive")
            default = None
        hint = _strip_optional(hints[f.name])
        kw.update(default=default, type=meta.get("type") or (hint if hint in (int, float, str) else str))
        if choices:
            kw["choices"] = list(choices)
        for k in ("nargs", "metavar", "action"):
            if meta.get(k):
                kw[k] = meta[k]
        target.add_argument(*names, **kw)
    return groups


def config_values(cls: type, args: argparse.Namespace) -> dict:
    """The option fields of `cls` from parsed flags (each through its `parse`)."""
    out = {}
    for f in dataclasses.fields(cls):
        if is_option(f) and hasattr(args, f.name):
            v = getattr(args, f.name)
            if f.metadata.get("parse") is not None and v is not None:
                v = f.metadata["parse"](v)
            out[f.name] = v
    return out


def config_from_args(cls: type, args: argparse.Namespace, **extra):
    """`cls` built from parsed flags, plus the fields that are not flags (`extra`)."""
    return cls(**config_values(cls, args), **extra)


def render_flags(cls: type, values: dict) -> dict[str, Any]:
    """{flag: value} for field values of `cls` given by field name: the command-line spelling of settings a
    pipeline builds in code (for logs and for a reader comparing with the command's --help)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return {flag_name(fields[name]): value for name, value in values.items()}


def render_command(stage: str, config: Any, *positional: Any) -> str:
    """The command line a user would type to get `config`: only the flags whose value differs from the
    default, booleans as bare flags, in field order. For logs: nothing parses it back."""
    parts = [str(p) for p in positional]
    for f in dataclasses.fields(config):
        if not is_option(f):
            continue
        value = getattr(config, f.name)
        if value is None or value == default_of(f) and default_of(f) is not MISSING:
            continue
        if value is True:
            parts.append(flag_name(f))
        elif f.metadata.get("action") == "append":
            for v in value:
                parts += [flag_name(f), str(v)]
        elif value is not False:
            render = f.metadata.get("render")
            words = (
                render(value)
                if render
                else [",".join(map(str, value))]
                if isinstance(value, (list, tuple))
                else [str(value)]
            )
            parts += [flag_name(f), *words]
    return f"python -m xlbtm.scripts.{stage} {shlex.join(parts)}"
