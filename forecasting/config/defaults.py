"""``conf/default.yaml``, rendered from the settings models.

Every key with its default, its ``Field(description=...)`` as a comment beside it, a
section's description beside the section and a field's ``heading`` as a paragraph above
it; the environment variables of :data:`ENV_OVERRIDES` are named beside their key. A
test keeps the committed file equal to :func:`render_default_yaml`; after changing a
setting run ``python -m forecasting.config --write-default``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from forecasting.config.loading import ENV_OVERRIDES, default_conf_path
from forecasting.config.settings import Config

COMMENT_COLUMN = 30
MAX_WIDTH = 110  # an environment note goes on its own line rather than past this
HEADER = """\
Every setting of the platform with its default. `--conf FILE` overrides any of these
(only the keys it names); an environment variable named beside a key overrides both.

Rendered from forecasting/config/settings.py: change a setting there, then run
`python -m forecasting.config --write-default` (a test keeps the two equal)."""


def render_default_yaml() -> str:
    defaults = Config().to_dict()
    env = {key: var for var, key in ENV_OVERRIDES.items()}
    lines = _comment(HEADER) + [""]
    for name, field in Config.model_fields.items():
        section = _section(field)
        if section is None:
            if _extra(field, "heading"):
                lines += [""] + _comment(_extra(field, "heading"))
            lines += _entry(name, defaults[name], field, env.get(name))
            continue
        lines += ["", *_entry(name, None, field)]
        for sub, sub_field in section.model_fields.items():
            key = f"{name}.{sub}"
            lines += _entry(sub, defaults[name][sub], sub_field, env.get(key), indent="  ")
    return "\n".join(lines) + "\n"


def write_default_yaml(path: str | Path | None = None) -> Path:
    target = Path(path) if path is not None else default_conf_path()
    target.write_text(render_default_yaml())
    return target


def _entry(
    name: str, value: Any, field: FieldInfo, env_var: str | None = None, indent: str = ""
) -> list[str]:
    """``name: value`` (a section: ``name:``) with the field's description as a comment
    at COMMENT_COLUMN, its further lines continued below it."""
    text = f"{indent}{name}:" if _section(field) is not None else f"{indent}{name}: {_yaml_value(value)}"
    notes = (field.description or "").splitlines()
    if env_var:
        note = f"{env_var} overrides"
        if notes and COMMENT_COLUMN + len(notes[-1]) + len(note) + 4 <= MAX_WIDTH:
            notes[-1] += "; " + note
        else:
            notes.append(note)
    if not notes:
        return [text]
    pad = text.ljust(COMMENT_COLUMN) if len(text) < COMMENT_COLUMN else text + "  "
    return [f"{pad}# {notes[0]}"] + [" " * COMMENT_COLUMN + f"# {note}" for note in notes[1:]]


def _yaml_value(value: Any) -> str:
    """``value`` as YAML on one line: collections in flow style (``[80, 95]``, ``{}``)."""
    flow = isinstance(value, (list, dict))
    text = yaml.safe_dump(value, default_flow_style=flow, width=10**6, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()]


def _extra(field: FieldInfo, key: str) -> Any:
    extra = field.json_schema_extra
    return extra.get(key) if isinstance(extra, dict) else None


def _section(field: FieldInfo) -> type[BaseModel] | None:
    a = field.annotation
    return a if isinstance(a, type) and issubclass(a, BaseModel) else None
