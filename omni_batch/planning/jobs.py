"""Jobs and how one prompt entry expands into them: templates, readable stable ids, order.

A job is one request body the tool will submit once; its id names its files and its journal row.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
import string
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omni_batch.errors import Where

MAX_PROMPT_ID = 60  # characters; long ids are cut and keep a hash so they stay unique


@dataclass(frozen=True, slots=True)
class Job:
    """One generation: the exact body it sends and what the report carries beside it."""

    job_id: str
    prompt_id: str
    model: str
    prompt: str
    aspect_ratio: str
    duration: int
    resolution: str
    repeat: int
    tags: Mapping[str, str]
    vars: Mapping[str, str]
    source: str  # "path:line" (or "path:row N") of the prompt entry it came from

    @property
    def body(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt": self.prompt,
            "aspect_ratio": self.aspect_ratio,
            "duration": self.duration,
            "resolution": self.resolution,
        }

    def to_record(self) -> dict[str, Any]:
        """The JSON form `plan --format json` prints."""
        return {
            "job_id": self.job_id,
            "prompt_id": self.prompt_id,
            "repeat": self.repeat,
            "body": self.body,
            "tags": dict(self.tags),
            "vars": dict(self.vars),
            "source": self.source,
        }

    def to_row(self, var_names: tuple[str, ...], tag_names: tuple[str, ...]) -> dict[str, Any]:
        """The flat form (CSV, DataFrame): template vars as ``var_*``, tags as ``tag_*``."""
        row: dict[str, Any] = {
            "job_id": self.job_id,
            "prompt_id": self.prompt_id,
            "model": self.model,
            "prompt": self.prompt,
            "aspect_ratio": self.aspect_ratio,
            "duration": self.duration,
            "resolution": self.resolution,
            "repeat": self.repeat,
            "source": self.source,
        }
        for name in var_names:
            row[f"var_{name}"] = self.vars.get(name, "")
        for name in tag_names:
            row[f"tag_{name}"] = self.tags.get(name, "")
        return row


class TemplateError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Template:
    """Text with ``{name}`` placeholders; ``{{`` and ``}}`` are literal braces."""

    pieces: tuple[tuple[str, str | None], ...]  # (literal text, placeholder name or None)

    @classmethod
    def parse(cls, text: str) -> Template:
        pieces = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise TemplateError(f"{exc}; write {{{{ or }}}} for a literal brace") from None
        for literal, name, spec, conversion in parsed:
            if name is not None:
                if not name.isidentifier():
                    shown = "{" + name + "}"
                    raise TemplateError(
                        f"placeholder {shown} must be a variable name like {{product}}"
                    )
                if spec or conversion:
                    raise TemplateError(
                        f"placeholder {{{name}}} may not carry a format (only {{name}})"
                    )
            pieces.append((literal, name))
        return cls(tuple(pieces))

    @property
    def names(self) -> tuple[str, ...]:
        """Placeholder names in order of first use."""
        return tuple(dict.fromkeys(name for _, name in self.pieces if name))

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(lit + (values[name] if name else "") for lit, name in self.pieces)


_NOT_SAFE = re.compile(r"[^a-z0-9._]+")
_DOT_RUN = re.compile(r"[-.]*\.[-.]*")
_DASH_RUN = re.compile(r"-{2,}")


def slug_of(text: str) -> str:
    """Lower-case ``[a-z0-9._-]`` text with no ``..`` and no leading or trailing punctuation.
    Uncached: for text made once per prompt (a prompt, a whole prompt id); `slug` caches."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    out = _NOT_SAFE.sub("-", ascii_text)
    out = _DOT_RUN.sub(".", out)  # a dot run (with dashes) becomes one dot
    out = _DASH_RUN.sub("-", out)
    return out.strip("-._")


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]


# var values and axis values repeat across many jobs; a small cache: a value per job (an id
# number) would otherwise keep a cache entry per job for the whole run (flat memory)
slug = functools.lru_cache(maxsize=1024)(slug_of)


def bounded(ident: str) -> str:
    """Cut an over-long id at a dash and add a hash of the whole, keeping it unique."""
    if len(ident) <= MAX_PROMPT_ID:
        return ident
    head = ident[: MAX_PROMPT_ID - 7].rsplit("-", 1)[0] or ident[: MAX_PROMPT_ID - 7]
    return f"{head.strip('-._')}-{short_hash(ident)}"


def auto_prompt_id(prompt: str) -> str:
    """A readable id from the prompt's first words plus a hash of the whole prompt.

    Content-based, so reordering prompts in the manifest keeps every id (and its resume state).
    """
    words = slug_of(prompt)  # a prompt's: made once, never worth a cache entry
    if len(words) > 32:
        words = words[:32].rsplit("-", 1)[0].strip("-._")
    return f"{words or 'prompt'}-{short_hash(prompt)}"


def ratio_part(aspect_ratio: str) -> str:
    return slug(aspect_ratio.replace(":", "x"))


@dataclass(frozen=True, slots=True)
class Axis:
    """The values one body field takes for a prompt, and where they were written."""

    values: tuple[Any, ...]
    where: Where
    field: str


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """One validated prompt entry (a YAML item or a CSV row) ready to expand."""

    where: Where
    template: Template
    id_template: Template | None
    models: Axis
    aspect_ratios: Mapping[str, Axis]  # per model: explicit or that model's default
    durations: Mapping[str, Axis]
    resolutions: Mapping[str, Axis]
    repeats: int
    tags: Mapping[str, str]
    var_values: Mapping[str, tuple[str, ...]]  # only the vars this entry uses, in vars order

    def combos(self) -> Iterator[dict[str, str]]:
        names = list(self.var_values)
        for values in itertools.product(*(self.var_values[n] for n in names)):
            yield dict(zip(names, values, strict=True))

    @property
    def combo_count(self) -> int:
        count = 1
        for values in self.var_values.values():
            count *= len(values)
        return count

    def variants_per_combo(self) -> Iterator[tuple[str, str, int, str]]:
        """(model, aspect_ratio, duration, resolution) in expansion order."""
        for model in self.models.values:
            for ratio in self.aspect_ratios[model].values:
                for duration in self.durations[model].values:
                    for resolution in self.resolutions[model].values:
                        yield model, ratio, duration, resolution

    def prompt_id(self, combo: Mapping[str, str], prompt: str) -> str:
        if self.id_template is None:
            return auto_prompt_id(prompt)
        # a value with nothing usable in a file name ("日本") still needs a distinct id part
        parts = {name: slug(value) or short_hash(value) for name, value in combo.items()}
        rendered = self.id_template.render(parts)
        # vars the prompt uses but the id does not still have to tell the jobs apart
        missing = [parts[n] for n in self.var_values if n not in self.id_template.names]
        return bounded(slug_of("-".join([rendered, *missing])))  # one per prompt: uncached

    def expand(self, manifest_model: str, default_resolution: Mapping[str, str]) -> Iterator[Job]:
        """Every job of this entry: combos × model × ratio × duration × resolution × repeat."""
        source = str(self.where)
        variants = []
        for model, ratio, duration, resolution in self.variants_per_combo():
            parts = [slug(model)] if model != manifest_model else []
            parts += [ratio_part(ratio), f"{duration}s"]
            if resolution != default_resolution.get(model):
                parts.append(slug(resolution))
            variants.append((model, ratio, duration, resolution, "-".join(parts)))
        repeats = range(1, self.repeats + 1)
        for combo in self.combos():
            prompt = self.template.render(combo)
            prompt_id = self.prompt_id(combo, prompt)
            for model, ratio, duration, resolution, suffix in variants:
                for repeat in repeats:
                    yield Job(
                        job_id=f"{prompt_id}-{suffix}-r{repeat}",
                        prompt_id=prompt_id,
                        model=model,
                        prompt=prompt,
                        aspect_ratio=ratio,
                        duration=duration,
                        resolution=resolution,
                        repeat=repeat,
                        tags=self.tags,
                        vars=combo,
                        source=source,
                    )
