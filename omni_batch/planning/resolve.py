"""Turn raw prompt entries (YAML items, CSV rows) into validated PromptSpecs.

Owns typing of body fields, model rules per value, templates and whole-manifest id checks;
every problem goes to one Problems collector with the place it was written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from omni_batch.errors import Where
from omni_batch.planning.catalog import BODY_FIELDS, Catalog
from omni_batch.planning.jobs import Axis, PromptSpec, Template, TemplateError, slug
from omni_batch.planning.problems import Field, Problems, suggest

MAX_REPEATS = 1000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tabs and newlines are fine
MAX_DUPLICATES_SHOWN = 20


def text_of(value: Any) -> str | None:
    """A scalar as the text the user meant; None for anything that is not a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


class Resolver:
    def __init__(self, problems: Problems, catalog: Catalog):
        self.problems = problems
        self.catalog = catalog

    def spec(
        self,
        where: Where,
        fields: dict[str, Field],
        defaults: dict[str, Field],
        manifest_model: str,
        vars_: dict[str, tuple[str, ...]],
        used: set[str],
    ) -> PromptSpec | None:
        before = self.problems.raised
        prompt_field = fields["prompt"]
        prompt_text = text_of(prompt_field.value)
        template = id_template = None
        if prompt_text is None or not prompt_text.strip():
            self.problems.add(prompt_field.where, prompt_field.name, "empty prompt")
        elif found := _CONTROL.search(prompt_text):
            message = f"contains the control character #x{ord(found.group()):04x} (binary data?)"
            self.problems.add(prompt_field.where, prompt_field.name, message)
        else:
            template = self.template(prompt_text.strip(), prompt_field)
        if "id" in fields:
            id_text = text_of(fields["id"].value)
            if id_text is None or not slug(id_text.replace("{", "").replace("}", "")):
                self.problems.add(
                    fields["id"].where, fields["id"].name, "must be text with letters or digits"
                )
            else:
                id_template = self.template(id_text.strip(), fields["id"])
        names = tuple(
            dict.fromkeys(
                (template.names if template else ()) + (id_template.names if id_template else ())
            )
        )
        for var in names:
            if var not in vars_:
                known = ", ".join(vars_) or "none"
                hint = suggest(var, list(vars_))
                self.problems.add(
                    prompt_field.where,
                    prompt_field.name,
                    f"uses {{{var}}}, which is not defined under vars (defined: {known}){hint}",
                )
        used.update(names)

        def pick(key: str) -> Field | None:
            return fields.get(key) or defaults.get(key)

        model_field = fields.get("model") or Field(manifest_model, where, "model")
        models = self.values(model_field, str, "model")
        for model in models:
            if self.catalog.get(model) is None:
                self.problems.add(
                    model_field.where, model_field.name, self.catalog.unknown_model(model)
                )
        models = tuple(m for m in models if self.catalog.get(m) is not None)
        axes: dict[str, dict[str, Axis]] = {name: {} for name in BODY_FIELDS}
        for name in BODY_FIELDS:
            given = pick(name)
            kind = int if name == "duration" else str
            values = self.values(given, kind, name) if given else ()
            for model in models:
                rules = self.catalog.get(model)
                assert rules is not None
                if given is None:
                    axes[name][model] = Axis((rules.defaults[name],), where, name)
                    continue
                for value in values:
                    if problem := rules.value_problem(name, value):
                        self.problems.add(given.where, given.name, problem)
                axes[name][model] = Axis(values, given.where, given.name)
        for model in models:
            rules = self.catalog.get(model)
            assert rules is not None
            for ratio in axes["aspect_ratio"][model].values:
                for duration in axes["duration"][model].values:
                    for resolution in axes["resolution"][model].values:
                        body = {
                            "aspect_ratio": ratio,
                            "duration": duration,
                            "resolution": resolution,
                        }
                        if clash := rules.combination_problem(body):
                            self.problems.add(where, clash[0], clash[1])
        repeats = self.repeats(pick("repeats"))
        tags = self.tags(defaults.get("tags"), fields.get("tags"))
        if self.problems.raised > before or template is None or not models:
            return None
        return PromptSpec(
            where=where,
            template=template,
            id_template=id_template,
            models=Axis(models, model_field.where, model_field.name),
            aspect_ratios=axes["aspect_ratio"],
            durations=axes["duration"],
            resolutions=axes["resolution"],
            repeats=repeats,
            tags=tags,
            var_values={v: vars_[v] for v in vars_ if v in names},
        )

    def template(self, text: str, source: Field) -> Template | None:
        try:
            return Template.parse(text)
        except TemplateError as exc:
            self.problems.add(source.where, source.name, str(exc))
            return None

    def values(self, source: Field, kind: type, name: str) -> tuple[Any, ...]:
        """The list (or single value) of one body field, typed and checked for duplicates."""
        out: list[Any] = []
        items = source.items()
        if not items:
            self.problems.add(source.where, source.name, "must list at least one value")
        for item, where in items:
            value = (
                self.seconds(item, where, source.name)
                if kind is int
                else self.label(item, where, source.name)
            )
            if value is None:
                continue
            if value in out:
                self.problems.add(where, source.name, f"duplicate value {value}")
            else:
                out.append(value)
        return tuple(out)

    def seconds(self, item: Any, where: Where, name: str) -> int | None:
        if type(item) is int and item > 0:
            return item
        if isinstance(item, str) and item.strip().isdigit() and item.strip().isascii():
            return int(item)
        if isinstance(item, str) and re.fullmatch(r"\s*\d+\s*s(ec(ond)?s?)?\s*", item):
            digits = re.sub(r"[^0-9]", "", item)
            self.problems.add(
                where, name, f"{item!r} is not a whole number of seconds; write {digits}"
            )
        else:
            shown = repr(item) if isinstance(item, str) else item
            self.problems.add(where, name, f"{shown} is not a whole number of seconds")
        return None

    def label(self, item: Any, where: Where, name: str) -> str | None:
        if isinstance(item, str) and item.strip():
            return item.strip()
        example = {"aspect_ratio": " like 16:9", "resolution": " like 720P"}.get(
            name.rsplit(".", 1)[-1], ""
        )
        self.problems.add(
            where, name, f"must be text{example}" if item not in ("", None) else "empty value"
        )
        return None

    def repeats(self, source: Field | None) -> int:
        if source is None:
            return 1
        value = source.value
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if type(value) is not int or not 1 <= value <= MAX_REPEATS:
            self.problems.add(
                source.where, source.name, f"must be a whole number from 1 to {MAX_REPEATS}"
            )
            return 1
        return value

    def tags(self, *sources: Field | None) -> dict[str, str]:
        out: dict[str, str] = {}
        for source in sources:
            if source is None:
                continue
            if not isinstance(source.value, dict):
                self.problems.add(
                    source.where, source.name, "must be a mapping of tag names to values"
                )
                continue
            for key, value in source.value.items():
                text = text_of(value) if value is not None else ""
                if text is None:
                    self.problems.add(
                        source.where, f"{source.name}.{key}", "a tag value must be text or a number"
                    )
                else:
                    out[str(key)] = text
        return out

    def check_expansion(self, prompts: Sequence[PromptSpec], model: str) -> None:
        """Prompt limits per rendered prompt, and job ids unique across the whole manifest
        (``model``: the manifest's default model)."""
        seen: dict[str, Where] = {}
        duplicates = 0
        last: Where | None = None  # the entry of the last duplicate not listed one by one
        defaults = self.catalog.default_resolutions()
        for spec in prompts:
            limits = [self.catalog.get(m) for m in spec.models.values]
            for job in spec.expand(model, defaults):
                if job.repeat == 1:
                    for rules in limits:
                        if rules and (message := rules.prompt_problem(job.prompt)):
                            self.problems.add(spec.where, "prompt", message)
                first = seen.get(job.job_id)
                if first is None:
                    seen[job.job_id] = spec.where
                    continue
                duplicates += 1
                last = spec.where
                if duplicates <= MAX_DUPLICATES_SHOWN:
                    where = "by this entry twice" if first is spec.where else f"at {first} too"
                    self.problems.add(
                        spec.where, "id", f"job id {job.job_id!r} is produced {where}"
                    )
        if duplicates > MAX_DUPLICATES_SHOWN and last is not None:
            # one line for the rest, at the entry of the last one (each listed would drown
            # the first twenty)
            self.problems.add(
                last,
                "id",
                f"... and {duplicates - MAX_DUPLICATES_SHOWN} more duplicate job ids, "
                "the last of them here",
            )
