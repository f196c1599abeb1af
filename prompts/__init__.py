"""MCP prompt templates, one Markdown file each, and the one way to read and fill them.

A template is a Markdown file in this package (``<name>.md``): YAML front matter that
declares the prompt, then the body the assistant reads::

    ---
    name: request_approval            # must equal the file name
    title: Ask the operator to approve a draft
    description: One line shown in the client's prompt picker.
    arguments:
      - name: draft_id
        description: The draft to present (from draft_job).
        required: true
      - name: backend
        description: Optional arguments may carry a default.
        default: local
    ---
    Present draft {draft_id} ...

Placeholders are ``{argument_name}`` and nothing else: every ``{identifier}`` in the body
must be a declared argument (a typo is a load error, never a silent leftover), and every
declared argument must appear in the body. Other braces (JSON examples) are left alone.
Values are substituted in one pass, so a value that itself holds ``{x}`` is not expanded.

MCP sends prompt arguments as strings. A blank value counts as absent: an optional
argument then takes its default, a required one is refused.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tunestep.tools.core.errors import TunestepError

FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)", re.DOTALL)
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_VALUE_CHARS = 4000


class PromptArgument(BaseModel):
    """One argument of a template, as prompts/list shows it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    required: bool = False
    default: str | None = None

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not IDENTIFIER.match(value):
            raise ValueError("must be a lowercase identifier (a-z, 0-9, _)")
        return value


class PromptTemplate(BaseModel):
    """A template's declaration: what a client lists before asking for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    title: str
    description: str
    arguments: list[PromptArgument] = Field(default_factory=list)


class LoadedTemplate(BaseModel):
    """A checked template: its declaration and its body."""

    template: PromptTemplate
    body: str


def _invalid(name: str, message: str) -> TunestepError:
    return TunestepError("prompt_template_invalid", message, path=f"prompts/{name}.md")


def _names() -> list[str]:
    folder = resources.files(__name__)
    return sorted(entry.name[:-3] for entry in folder.iterdir()
                  if entry.name.endswith(".md") and entry.is_file())


@functools.cache
def _load(name: str) -> LoadedTemplate:
    """Read and check one template file (cached: package data does not change)."""
    return parse_template(name, resources.files(__name__).joinpath(f"{name}.md")
                          .read_text(encoding="utf-8"))


def parse_template(name: str, text: str) -> LoadedTemplate:
    """Check a template's text (front matter, arguments, placeholders) and split it.

    Raises ``prompt_template_invalid`` naming what is wrong.
    """
    match = FRONT_MATTER.match(text.lstrip("\ufeff"))
    if match is None:
        raise _invalid(name, "no YAML front matter between '---' lines at the top")
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise _invalid(name, f"front matter is not valid YAML: {exc}") from None
    try:
        template = PromptTemplate.model_validate(meta)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise _invalid(name, f"front matter key '{key}': {first['msg']}") from None
    if template.name != name:
        raise _invalid(name, f"front matter name '{template.name}' differs from the file name")
    body = text[match.end():].strip() + "\n"
    declared = [a.name for a in template.arguments]
    if len(set(declared)) != len(declared):
        raise _invalid(name, "an argument is declared twice")
    for arg in template.arguments:
        if arg.required and arg.default is not None:
            raise _invalid(name, f"required argument '{arg.name}' cannot have a default")
    used = set(PLACEHOLDER.findall(body))
    if undeclared := sorted(used - set(declared)):
        raise _invalid(name, f"placeholders without a declared argument: {undeclared}")
    if unused := sorted(set(declared) - used):
        raise _invalid(name, f"declared arguments the body never uses: {unused}")
    return LoadedTemplate(template=template, body=body)


def list_templates() -> list[PromptTemplate]:
    """Every template shipped in this package, by name."""
    return [_load(name).template for name in _names()]


def get_template(name: str) -> PromptTemplate:
    """One template's declaration; ``prompt_unknown`` when there is none by that name."""
    return _get(name).template


def _get(name: str) -> LoadedTemplate:
    known = _names()
    if name not in known:
        raise TunestepError("prompt_unknown",
                            f"no prompt named '{name}'; known prompts: {', '.join(known)}")
    return _load(name)


def render(name: str, /, **args: str | None) -> str:
    """The template's body with its arguments filled in.

    Refusals: ``prompt_unknown`` (no such template), ``prompt_argument_missing`` (a
    required argument absent or blank), ``prompt_argument_unknown`` (an argument the
    template does not declare), ``prompt_argument_invalid`` (not a string, too long, or
    holding control characters).
    """
    loaded = _get(name)
    declared = {a.name: a for a in loaded.template.arguments}
    if unknown := sorted(set(args) - set(declared)):
        raise TunestepError("prompt_argument_unknown",
                            f"prompt '{name}' has no argument(s) {', '.join(unknown)}; it "
                            f"takes: {', '.join(declared) or 'none'}")
    values: dict[str, str] = {}
    for arg in loaded.template.arguments:
        value = _clean(name, arg.name, args.get(arg.name))
        if value is None:
            if arg.required:
                raise TunestepError("prompt_argument_missing",
                                    f"prompt '{name}' needs the argument '{arg.name}': "
                                    f"{arg.description}")
            value = arg.default or ""
        values[arg.name] = value
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], loaded.body)


def _clean(prompt: str, arg: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TunestepError("prompt_argument_invalid",
                            f"prompt '{prompt}': argument '{arg}' must be a string")
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_VALUE_CHARS:
        raise TunestepError("prompt_argument_invalid",
                            f"prompt '{prompt}': argument '{arg}' is longer than "
                            f"{MAX_VALUE_CHARS} characters")
    if any((ord(ch) < 32 and ch not in "\n\t") or ord(ch) == 127 for ch in value):
        raise TunestepError("prompt_argument_invalid",
                            f"prompt '{prompt}': argument '{arg}' holds a control character")
    return value
