"""The settings reference page, generated from the settings structs so it cannot drift from them.

Every key comes from `bitinglip.core.Settings` (msgspec's own description of its fields: name, type,
constraints, default); its description is the comment block right above the field in
`src/bitinglip/core/settings.py`, and a section's is its class docstring. A field without a comment is an
error, so a new setting cannot reach a release undocumented. The default shown is what a checkout gets:
the struct's default with `settings/default.toml` over it (the built-in value is named where they differ).

Two ways in:

- a MkDocs hook (`hooks:` in mkdocs.yml): `make docs` adds the page to the site at build time as
  `reference/settings.md`, so no copy is committed to go stale;
- `python scripts/settings_reference.py [--output FILE]` prints (or writes) the same Markdown.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import msgspec
from msgspec import inspect as mi

from bitinglip.core import Settings

PAGE = "reference/settings.md"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOML = ROOT / "settings" / "default.toml"
ENV_PREFIX = "BITINGLIP"

INTRO = """\
# Settings reference

Every setting BitingLip reads, generated from the settings structs
(`src/bitinglip/core/settings.py`) when the site is built. How the layers combine, and where the files
live, is on the [Settings](../settings.md) page.

- **Default** is what a checkout gets: the built-in value with `settings/default.toml` over it. Where the
  two differ, the built-in value (what a server started without that file gets) follows it.
- **Environment** is the variable that sets the key: `BITINGLIP_` and the key's path in capitals, `__`
  between the parts. Its value is read as TOML (`8000`, `true`, `"5m"`, `[0, 1]`); a table's keys nest
  further (`BITINGLIP_CLUSTER__ENGINE__MAX_NUM_SEQS=64`).
- *unset* means the key has no value; its description says what happens then.
"""


class UndocumentedSetting(ValueError):
    """A settings field without the comment the reference takes its description from."""


def field_comments(cls: type) -> dict[str, str]:
    """Each field of `cls` -> the `#` comment block directly above it in the class's source, as one paragraph."""
    lines, _ = inspect.getsourcelines(cls)
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    body = tree.body[0]
    assert isinstance(body, ast.ClassDef)
    src_lines = source.splitlines()
    comments: dict[str, str] = {}
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        block: list[str] = []
        row = node.lineno - 2  # the line above the field, 0-based
        while row >= 0 and src_lines[row].strip().startswith("#"):
            block.insert(0, src_lines[row].strip().lstrip("#").strip())
            row -= 1
        comments[node.target.id] = " ".join(part for part in block if part)
    return comments


def section_text(cls: type) -> str:
    """The class's own docstring (not one inherited from msgspec.Struct), as one paragraph."""
    doc = vars(cls).get("__doc__")
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


def type_text(t: mi.Type) -> str:
    """A field's type in the words of a TOML file."""
    if isinstance(t, mi.UnionType):
        parts = [type_text(member) for member in t.types if not isinstance(member, mi.NoneType)]
        return " or ".join(parts)
    if isinstance(t, mi.LiteralType):
        return " or ".join(f"`{toml_value(v)}`" for v in t.values)
    if isinstance(t, mi.BoolType):
        return "boolean"
    if isinstance(t, mi.IntType | mi.FloatType):
        name = "integer" if isinstance(t, mi.IntType) else "number"
        bounds = [f"≥ {t.ge}"] if t.ge is not None else []
        bounds += [f"≤ {t.le}"] if t.le is not None else []
        return f"{name} ({', '.join(bounds)})" if bounds else name
    if isinstance(t, mi.StrType):
        return "string"
    if isinstance(t, mi.ListType):
        if isinstance(t.item_type, mi.StructType):
            return "list of tables"
        return f"list of {type_text(t.item_type)}"
    if isinstance(t, mi.DictType):
        if isinstance(t.value_type, mi.StructType):
            return "table of tables"
        return "table"
    if isinstance(t, mi.AnyType):
        return "any"
    if isinstance(t, mi.StructType):
        return "table"
    raise TypeError(f"no words for the settings type {t!r}")


def toml_value(value: Any) -> str:
    """A value as it would be written in a settings file."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return msgspec.json.encode(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, msgspec.Struct):
        return toml_value(msgspec.to_builtins(value))
    return str(value)


def code(text: str) -> str:
    return f"*{text}*" if text in ("unset", "required") else f"`{text}`"


def checkout_defaults(path: Path = DEFAULT_TOML) -> Settings:
    """The struct defaults with `settings/default.toml` over them (no other layer)."""
    with path.open("rb") as f:
        return msgspec.convert(tomllib.load(f), Settings)


class _Table:
    def __init__(self, key: str, title: str, text: str) -> None:
        self.key, self.title, self.text = key, title, text
        self.rows: list[str] = []


def _walk(
    struct: mi.StructType,
    prefix: str,
    built_in: Any,
    checkout: Any,
    env: bool,
    table: _Table,
    tables: list[_Table],
) -> None:
    comments = field_comments(struct.cls)
    for field in struct.fields:
        key = f"{prefix}{field.name}"
        t = field.type
        if isinstance(t, mi.StructType):  # a section of its own
            sub = _Table(key, f"`{key}`", section_text(t.cls))
            tables.append(sub)
            _walk(t, f"{key}.", getattr(built_in, field.name), getattr(checkout, field.name), env, sub, tables)
            continue
        text = comments.get(field.name, "")
        if not text:
            raise UndocumentedSetting(
                f"setting `{key}` ({struct.cls.__qualname__}.{field.name}) has no comment above it to document it"
            )
        entry = _entry_struct(t)
        if entry is not None:  # a list or a table of structs: its entries get a table of their own
            shape, suffix = ("[]", "-entry") if isinstance(t, mi.ListType) else (".<name>", "-name")
            sub = _Table(f"{key}{suffix}", f"`{key}{shape}`", section_text(entry.cls))
            _walk(entry, f"{key}{shape}.", None, None, False, sub, tables)
            tables.append(sub)
            text += ("" if text.endswith((".", ")")) else ".") + f" See [{sub.title}](#{_anchor(sub.key)})."
        if built_in is None:  # an entry's field: its struct default only
            shown = code(_default_text(field))
        else:
            ours, theirs = toml_value(getattr(checkout, field.name)), toml_value(getattr(built_in, field.name))
            shown = code(ours) if ours == theirs else f"{code(ours)} (built in: {code(theirs)})"
        name = f"`{key}`"
        if env:
            name += f"<br>`{ENV_PREFIX}_{key.replace('.', '__').upper()}`"
        cells = [name, type_text(t), shown, text]
        table.rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")


def _anchor(key: str) -> str:
    return key.replace(".", "-")


def _entry_struct(t: mi.Type) -> mi.StructType | None:
    if isinstance(t, mi.ListType) and isinstance(t.item_type, mi.StructType):
        return t.item_type
    if isinstance(t, mi.DictType) and isinstance(t.value_type, mi.StructType):
        return t.value_type
    return None


def _default_text(field: mi.Field) -> str:
    if field.required:
        return "required"
    if field.default is not msgspec.NODEFAULT:
        return toml_value(field.default)
    return toml_value(field.default_factory())


def render(defaults_toml: Path = DEFAULT_TOML) -> str:
    """The whole page, as Markdown."""
    root = mi.type_info(Settings)
    assert isinstance(root, mi.StructType)
    top = _Table("top-level", "Top level", section_text(Settings))
    tables = [top]
    _walk(root, "", Settings(), checkout_defaults(defaults_toml), True, top, tables)
    out = [INTRO]
    for table in tables:
        if not table.rows:
            continue
        out.append(f"## {table.title} {{ #{_anchor(table.key)} }}\n")
        if table.text:
            out.append(f"{table.text}\n")
        out.append("| Key | Type | Default | Description |\n| --- | --- | --- | --- |")
        out.append("\n".join(table.rows) + "\n")
    return "\n".join(out)


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated page to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the page here (default: print it)")
    args = parser.parse_args()
    page = render()
    if args.output:
        args.output.write_text(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
