"""Command-line flags generated from the settings: one flag per setting, grouped by section, with its help text,
allowed values and default as a user would type it, and help that never breaks a name at its hyphen."""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Collection
from typing import Any

from ia2 import config
from ia2.config import adapter_kinds


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that never breaks a name at its hyphen: `zero-shot` and `ia2-sft` stay whole on one line."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


# Every option's default in --help (run's settings say theirs in their own help text).
SHOWN = {"formatter_class": HelpFormatter}


def shown(value: Any) -> str:
    """A default as a user would type it; "unset" for a setting that is off unless given."""
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "unset"
    if isinstance(value, dict):
        return next((name for name, preset in adapter_kinds.PRESETS.items() if preset == value), json.dumps(value))
    return "unset" if value is None else str(value)


def add_settings(
    p: argparse.ArgumentParser, defaults: dict[str, Any] | None = None, hidden: Collection[str] = ()
) -> None:
    """One flag per setting, grouped by section, each with its help text, allowed values and default (`defaults`:
    the command's own, by setting name); a flag's destination is the setting's path, and flags not given stay unset
    (so a --config file's values hold). The `hidden` settings' flags are left out of --help (the command refuses
    them, in one line that says why)."""
    groups: dict[str, Any] = {}
    for path, f in config.paths().items():
        section = path.partition(".")[0] if "." in path else "run"
        group = groups.get(section) or groups.setdefault(section, p.add_argument_group(f"{section} settings"))
        name = path.rpartition(".")[2]
        meta = f.metadata
        value = tuple(defaults[name]) if defaults and name in defaults else config.default(path)
        choices = meta["choices"]() if callable(meta["choices"]) else meta["choices"]
        help_text = meta["help"] + (f"; one of: {', '.join(choices)}" if choices else "")
        help_text += " (comma-separated)" if isinstance(value, tuple) or path == "data.labels" else ""
        help_text += f" [default: {shown(value)}]" if path not in config.REQUIRED else " [required]"
        kind = config.annotation(path)
        help_text = argparse.SUPPRESS if path in hidden else help_text.replace("%", "%%")
        if kind is bool:
            group.add_argument(
                config.flag(path),
                dest=path,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(
                config.flag(path),
                dest=path,
                default=argparse.SUPPRESS,
                metavar=_metavar(kind),
                help=help_text,
            )


def _metavar(kind: Any) -> str:
    """What a flag takes, from the setting's type."""
    text = str(kind)
    if "tuple" in text:
        return "A,B,..."
    if "int" in text:
        return "INT|FILE" if "str" in text else "INT"
    return "X" if "float" in text else "NAME|MAPPING" if "dict" in text else "TEXT"
