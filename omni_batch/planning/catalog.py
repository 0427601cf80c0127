"""Model rules as data: which aspect ratios, durations and resolutions each model accepts.

The shipped rules live in ``catalog.yaml``; ``load_catalog(overlay)`` lays a user's file over
them. The manifest loader and the simulator both judge request bodies with ``ModelRules``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omni_batch.errors import CatalogError, Problem, Where
from omni_batch.planning._yaml import LDict, YamlSyntaxError, load_located
from omni_batch.planning.problems import suggest

BODY_FIELDS = ("aspect_ratio", "duration", "resolution")


@dataclass(frozen=True, slots=True)
class Constraint:
    """When ``when`` matches a body, each field in ``allow`` must take one of its values."""

    when: Mapping[str, Any]
    allow: Mapping[str, tuple[Any, ...]]

    def violation(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        if any(body.get(k) != v for k, v in self.when.items()):
            return None
        for name, allowed in self.allow.items():
            if body.get(name) not in allowed:
                cond = ", ".join(f"{k} {v}" for k, v in self.when.items())
                return (
                    name,
                    f"{body.get(name)} is not allowed with {cond} (allowed: {_list(allowed)})",
                )
        return None


@dataclass(frozen=True, slots=True)
class ModelRules:
    name: str
    aspect_ratios: tuple[str, ...]
    resolutions: tuple[str, ...]
    durations: tuple[int, ...] = ()
    duration_range: tuple[int, int] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    prompt_max_chars: int | None = None
    constraints: tuple[Constraint, ...] = ()
    description: str = ""
    # issue #15: USD per second of video, one figure or one per resolution; None: unknown
    usd_per_second: float | Mapping[str, float] | None = None
    price_note: str = ""  # "estimate as of 2026-08 (source)", or where a user's price came from

    def price(self, resolution: str) -> float | None:
        """USD per second of video at ``resolution``; None when the catalog has no price."""
        price = self.usd_per_second
        if isinstance(price, Mapping):
            return price.get(resolution)
        return price

    def price_text(self) -> str:
        """The price as people read it: "$0.12/s" or "720p $0.10/s, 1080p $0.15/s"."""
        price = self.usd_per_second
        if price is None:
            return "price unknown"
        if isinstance(price, Mapping):
            text = ", ".join(f"{res} {usd(value)}/s" for res, value in price.items())
            missing = [r for r in self.resolutions if r not in price]
            if missing:
                text += f"; {', '.join(missing)} price unknown"
        else:
            text = f"{usd(price)}/s"
        return f"{text} ({self.price_note})" if self.price_note else text

    def allowed(self, name: str) -> str:
        """Human text of what ``name`` may be, for error messages."""
        if name == "duration" and self.duration_range:
            lo, hi = self.duration_range
            return f"{lo}-{hi}"
        values = {"aspect_ratio": self.aspect_ratios, "resolution": self.resolutions}
        return _list(values.get(name, self.durations))

    def value_problem(self, name: str, value: Any) -> str | None:
        """Why ``value`` is not allowed for field ``name`` of this model, or None."""
        if name == "duration":
            ok = (
                self.duration_range[0] <= value <= self.duration_range[1]
                if self.duration_range
                else value in self.durations
            )
        else:
            choices = self.aspect_ratios if name == "aspect_ratio" else self.resolutions
            ok = value in choices
            if not ok:
                hint = suggest(str(value), [str(c) for c in choices], fold_case=True)
                return (
                    f"{value} is not allowed for {self.name} (allowed: {self.allowed(name)}){hint}"
                )
        if ok:
            return None
        return f"{value} is not allowed for {self.name} (allowed: {self.allowed(name)})"

    def combination_problem(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        for constraint in self.constraints:
            found = constraint.violation(body)
            if found:
                return found
        return None

    def prompt_problem(self, prompt: str) -> str | None:
        if self.prompt_max_chars is not None and len(prompt) > self.prompt_max_chars:
            return (
                f"prompt has {len(prompt)} characters; {self.name} allows at most "
                f"{self.prompt_max_chars}"
            )
        return None

    def check_body(self, body: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Judge a request body as the API would: [(field, message)], empty when valid.

        Types are strict (``duration`` must be an integer, not "6"); omitted optional fields
        take the model's defaults.
        """
        found: list[tuple[str, str]] = []
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            found.append(("prompt", "required: a non-empty string"))
        elif problem := self.prompt_problem(prompt):
            found.append(("prompt", problem))
        filled = {name: body.get(name, self.defaults.get(name)) for name in BODY_FIELDS}
        for name, value in filled.items():
            wanted = int if name == "duration" else str
            if type(value) is not wanted:
                found.append((name, f"must be {'an integer' if wanted is int else 'a string'}"))
            elif problem := self.value_problem(name, value):
                found.append((name, problem))
        if not found and (combo := self.combination_problem(filled)):
            found.append(combo)
        return found


@dataclass(frozen=True, slots=True)
class Catalog:
    models: Mapping[str, ModelRules]

    def get(self, name: str) -> ModelRules | None:
        return self.models.get(name)

    def default_resolutions(self) -> dict[str, str]:
        """Each model's default resolution ('' when it has none)."""
        return {name: rules.defaults.get("resolution", "") for name, rules in self.models.items()}

    def unknown_model(self, name: Any) -> str:
        hint = suggest(str(name), list(self.models), fold_case=True)
        return f"unknown model {name!r} (known: {_list(self.models)}){hint}"


def usd(amount: float | None, unknown: str = "price unknown") -> str:
    """``$1.23`` (``$0.125`` below a dollar keeps its third digit); never $0 for no price."""
    if amount is None or amount != amount:  # None or NaN
        return unknown
    if 0 < abs(amount) < 1 and round(amount, 3) != round(amount, 2):
        return f"${amount:,.3f}"
    return f"${amount:,.2f}"


def _list(values: Any) -> str:
    return ", ".join(str(v) for v in values)


_MODEL_KEYS = {
    "description",
    "aspect_ratios",
    "durations",
    "resolutions",
    "defaults",
    "prompt_max_chars",
    "constraints",
    "usd_per_second",
    "price_estimate",
    "price_as_of",
    "price_source",
}
PRICE_KEYS = ("usd_per_second", "price_estimate", "price_as_of", "price_source")


class _CatalogReader:
    """Turns located YAML into ModelRules, collecting every problem with its line."""

    def __init__(self, path: str):
        self.path = path
        self.problems: list[Problem] = []

    def problem(self, line: int | None, name: str, message: str) -> None:
        self.problems.append(Problem(Where(self.path, line), name, message))

    def strings(self, raw: Any, line: int | None, name: str) -> tuple[str, ...]:
        if not isinstance(raw, list) or not raw or not all(isinstance(v, str) for v in raw):
            self.problem(line, name, "must be a non-empty list of strings")
            return ()
        return tuple(raw)

    def model(self, name: str, raw: dict[str, Any], base: dict[str, Any]) -> ModelRules | None:
        merged = {**base, **raw}
        lines = getattr(raw, "key_lines", {})
        line_of = lambda key: lines.get(key, getattr(raw, "line", None))  # noqa: E731
        before = len(self.problems)
        for key in raw:
            if (
                re.fullmatch(r"[a-z]{3}_per_(second|sec|s|video)", str(key))
                and key not in _MODEL_KEYS
            ):
                self.problem(
                    line_of(key),
                    f"{name}.{key}",
                    "unknown currency field: prices are USD per second of video (usd_per_second)",
                )
            elif key not in _MODEL_KEYS:
                self.problem(
                    line_of(key),
                    f"{name}.{key}",
                    "unknown key" + suggest(key, sorted(_MODEL_KEYS), fold_case=True),
                )
        if "usd_per_second" in raw and not any(k in raw for k in PRICE_KEYS[1:]):
            # a price the user gave replaces ours, and with it our "estimate" label
            merged = {k: v for k, v in merged.items() if k not in PRICE_KEYS[1:]}
        ratios = self.strings(
            merged.get("aspect_ratios"), line_of("aspect_ratios"), f"{name}.aspect_ratios"
        )
        resolutions = self.strings(
            merged.get("resolutions"), line_of("resolutions"), f"{name}.resolutions"
        )
        durations, duration_range = (), None
        raw_d = merged.get("durations")
        if (
            isinstance(raw_d, dict)
            and set(raw_d) == {"min", "max"}
            and all(type(v) is int and v > 0 for v in raw_d.values())
        ):
            duration_range = (raw_d["min"], raw_d["max"])
        elif isinstance(raw_d, list) and raw_d and all(type(v) is int and v > 0 for v in raw_d):
            durations = tuple(raw_d)
        else:
            self.problem(
                line_of("durations"),
                f"{name}.durations",
                "must be a list of whole seconds or {min: N, max: M}",
            )
        limit = merged.get("prompt_max_chars")
        if limit is not None and (type(limit) is not int or limit <= 0):
            self.problem(
                line_of("prompt_max_chars"),
                f"{name}.prompt_max_chars",
                "must be a positive integer or null",
            )
        defaults = merged.get("defaults") or {}
        if not isinstance(defaults, dict) or set(defaults) - set(BODY_FIELDS):
            self.problem(
                line_of("defaults"), f"{name}.defaults", f"may only set {_list(BODY_FIELDS)}"
            )
            defaults = {}
        constraints = []
        for item in merged.get("constraints") or []:
            if not (
                isinstance(item, dict)
                and set(item) == {"when", "allow"}
                and isinstance(item["when"], dict)
                and isinstance(item["allow"], dict)
                and all(isinstance(v, list) for v in item["allow"].values())
            ):
                self.problem(
                    line_of("constraints"),
                    f"{name}.constraints",
                    "each needs `when: {...}` and `allow: {field: [...]}`",
                )
                continue
            constraints.append(
                Constraint(dict(item["when"]), {k: tuple(v) for k, v in item["allow"].items()})
            )
        price = self.price(
            merged.get("usd_per_second"), line_of("usd_per_second"), name, resolutions
        )
        note = self.price_note(merged, line_of, name)
        if len(self.problems) > before:
            return None
        rules = ModelRules(
            name=name,
            aspect_ratios=ratios,
            resolutions=resolutions,
            durations=durations,
            duration_range=duration_range,
            defaults=dict(defaults),
            prompt_max_chars=limit,
            constraints=tuple(constraints),
            description=str(merged.get("description") or ""),
            usd_per_second=price,
            price_note=note,
        )
        for key, value in rules.defaults.items():
            if msg := rules.value_problem(key, value):
                self.problem(line_of("defaults"), f"{name}.defaults.{key}", msg)
        return rules

    def price(
        self, raw: Any, line: int | None, name: str, resolutions: tuple[str, ...]
    ) -> float | dict[str, float] | None:
        """``usd_per_second``: a number, or {resolution: number}; null means unknown."""
        field_name = f"{name}.usd_per_second"

        def number(value: Any, where: str, at: int | None = line) -> float | None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.problem(at, where, f"{value!r} is not a number (USD per second, e.g. 0.12)")
                return None
            if not math.isfinite(value) or value < 0:
                self.problem(at, where, f"{value} is not a price: it must be 0 or more")
                return None
            return float(value)

        if raw is None:
            return None
        if isinstance(raw, dict):
            out = {}
            lines = getattr(raw, "key_lines", {})
            for res, value in raw.items():
                at = lines.get(res, line)
                if resolutions and res not in resolutions:
                    self.problem(
                        at,
                        f"{field_name}.{res}",
                        f"{name} has no resolution {res!r} (resolutions: {_list(resolutions)})"
                        + suggest(str(res), list(resolutions), fold_case=True),
                    )
                    continue
                if (found := number(value, f"{field_name}.{res}", at)) is not None:
                    out[str(res)] = found
            if not raw:
                self.problem(line, field_name, "an empty map: give {resolution: USD per second}")
            return out or None
        return number(raw, field_name)

    def price_note(self, merged: dict[str, Any], line_of: Any, name: str) -> str:
        """ "estimate as of 2026-08: source" from price_estimate / price_as_of / price_source."""
        estimate = merged.get("price_estimate", False)
        if not isinstance(estimate, bool):
            self.problem(
                line_of("price_estimate"), f"{name}.price_estimate", "must be true or false"
            )
        parts = []
        for key in ("price_as_of", "price_source"):
            value = merged.get(key)
            if value is not None and not isinstance(value, str | int | float):
                self.problem(line_of(key), f"{name}.{key}", "must be text")
            elif value is not None:
                parts.append(str(value))
        head = "estimate" if estimate is True else ""
        if head and parts:
            head += f" as of {parts[0]}" if merged.get("price_as_of") is not None else ""
        rest = [str(merged["price_source"])] if merged.get("price_source") is not None else []
        if not head and merged.get("price_as_of") is not None:
            head = f"as of {merged['price_as_of']}"
        return ": ".join(x for x in (head, *rest) if x)

    def read(
        self, text: str, base: Mapping[str, dict[str, Any]]
    ) -> dict[str, tuple[dict[str, Any], ModelRules]]:
        try:
            doc, duplicates = load_located(text)
        except YamlSyntaxError as exc:
            self.problem(exc.line, "", exc.message)
            return {}
        for line, message in duplicates:
            self.problem(line, "", message)
        if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
            self.problem(
                getattr(doc, "line", None),
                "models",
                "a catalog is a mapping with a `models:` mapping",
            )
            return {}
        out = {}
        models: LDict = doc["models"]
        for name, raw in models.items():
            if not isinstance(raw, dict):
                self.problem(models.key_lines.get(name), name, "must be a mapping of rules")
                continue
            merged = {**base.get(name, {}), **raw}
            rules = self.model(name, raw, base.get(name, {}))
            if rules is not None:
                out[name] = (merged, rules)
        return out


def load_catalog(overlay: str | Path | None = None) -> Catalog:
    """The shipped catalog, with ``overlay`` (a YAML/JSON file) laid over it if given."""
    shipped = resources.files("omni_batch.planning").joinpath("catalog.yaml").read_text("utf-8")
    reader = _CatalogReader("omni_batch/planning/catalog.yaml")
    entries = reader.read(shipped, {})
    if reader.problems:  # pragma: no cover - a broken shipped catalog is a packaging bug
        raise CatalogError(reader.problems)
    if overlay is not None:
        path = str(overlay)
        reader = _CatalogReader(path)
        try:
            text = Path(overlay).read_text("utf-8-sig")
        except FileNotFoundError:
            raise CatalogError([Problem(Where(path), "", "catalog file not found")]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError([Problem(Where(path), "", f"cannot read catalog: {exc}")]) from None
        extra = reader.read(text, {name: raw for name, (raw, _) in entries.items()})
        if reader.problems:
            raise CatalogError(reader.problems)
        entries.update(extra)
    return Catalog({name: rules for name, (_, rules) in entries.items()})
