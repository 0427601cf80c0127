"""Read a YAML or CSV manifest, validate it against the model catalog, expand it into jobs.

Every problem is collected with its file and line (CSV: row) before anything is raised, so
the user fixes a manifest in one pass; expansion is a generator and never holds all jobs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni_batch.errors import ManifestError, Problem, Where
from omni_batch.planning._yaml import LDict, LList, YamlSyntaxError, load_located
from omni_batch.planning.catalog import Catalog, load_catalog, usd
from omni_batch.planning.jobs import Job, PromptSpec, slug
from omni_batch.planning.problems import Field, Problems, suggest
from omni_batch.planning.resolve import Resolver, text_of
from omni_batch.planning.sources import csv_entries, read_text

DEFAULT_MODEL = "gemini_omni"
TOP_KEYS = ("name", "model", "defaults", "vars", "prompts", "prompts_file", "budget")
DEFAULT_KEYS = ("aspect_ratio", "duration", "resolution", "repeats", "tags")
PROMPT_KEYS = ("id", "prompt", "model", "aspect_ratio", "duration", "resolution", "repeats", "tags")
BUDGET_KEYS = ("max_jobs", "max_video_seconds", "max_cost")
# Jobs a manifest may expand to when neither its `budget.max_jobs` nor the caller (`--max-jobs`)
# sets a limit. Validation holds every job id in memory: 1,000,000 jobs take 5.3 s and 159 MB
# peak to `plan` (23 s to `plan --format json`), inside the 300 MB the README promises for
# planning; 2,000,000 would not be. A typo in a vars list cannot eat the machine, and the limit
# is far past any batch anyone pays for (a million videos).
DEFAULT_MAX_JOBS = 1_000_000


@dataclass(frozen=True, slots=True)
class Budget:
    max_jobs: int | None = None
    max_video_seconds: int | None = None
    max_cost: float | None = None  # USD, by the catalog's prices (issue #15)


@dataclass(frozen=True, slots=True)
class PlanSummary:
    """What a manifest expands to, counted without expanding it."""

    name: str
    path: str
    prompts: int
    jobs: int
    video_seconds: int
    by_model: dict[str, int]
    by_aspect_ratio: dict[str, int]
    by_duration: dict[int, int]
    by_resolution: dict[str, int]
    budget: Budget
    # money (issue #15): the estimate of the jobs whose price the catalog knows, and how many
    # jobs it does not know a price for (never counted as $0)
    cost_usd: float = 0.0
    unpriced_jobs: int = 0
    cost_by_model: dict[str, float] = field(default_factory=dict)
    cost_by_aspect_ratio: dict[str, float] = field(default_factory=dict)
    cost_by_duration: dict[int, float] = field(default_factory=dict)
    unpriced_by_model: dict[str, int] = field(default_factory=dict)

    @property
    def within_budget(self) -> bool:
        b = self.budget
        return (
            (b.max_jobs is None or self.jobs <= b.max_jobs)
            and (b.max_video_seconds is None or self.video_seconds <= b.max_video_seconds)
            and (b.max_cost is None or (not self.unpriced_jobs and self.cost_usd <= b.max_cost))
        )


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: its prompt entries and how they expand, nothing per job."""

    path: str
    name: str
    model: str
    prompts: tuple[PromptSpec, ...]
    var_names: tuple[str, ...]
    tag_names: tuple[str, ...]
    budget: Budget
    catalog: Catalog = field(repr=False)
    notes: tuple[Problem, ...] = ()  # guesses made while reading (a CSV's delimiter), to show

    def jobs(self) -> Iterator[Job]:
        """Every job in expansion order, lazily."""
        defaults = self._default_resolutions()
        for spec in self.prompts:
            yield from spec.expand(self.model, defaults)

    def _default_resolutions(self) -> dict[str, str]:
        return self.catalog.default_resolutions()

    def price(self, model: str, resolution: str) -> float | None:
        """USD per second of video of a job, None when the catalog has no price for it."""
        rules = self.catalog.get(model)
        return rules.price(resolution) if rules is not None else None

    def job_cost(self, job: Job) -> float | None:
        price = self.price(job.model, job.resolution)
        return None if price is None else round(price * job.duration, 6)

    def summary(self) -> PlanSummary:
        models: Counter[str] = Counter()
        ratios: Counter[str] = Counter()
        durations: Counter[int] = Counter()
        resolutions: Counter[str] = Counter()
        money: dict[str, dict] = {"model": {}, "ratio": {}, "duration": {}}
        unpriced: Counter[str] = Counter()
        seconds = 0
        for spec in self.prompts:
            each = spec.combo_count * spec.repeats
            for model, ratio, duration, resolution in spec.variants_per_combo():
                models[model] += each
                ratios[ratio] += each
                durations[duration] += each
                resolutions[resolution] += each
                seconds += each * duration
                price = self.price(model, resolution)
                if price is None:
                    unpriced[model] += each
                    continue
                for name, key in (("model", model), ("ratio", ratio), ("duration", duration)):
                    money[name][key] = money[name].get(key, 0.0) + each * duration * price
        return PlanSummary(
            name=self.name,
            path=self.path,
            prompts=len(self.prompts),
            jobs=sum(models.values()),
            video_seconds=seconds,
            by_model=dict(models),
            by_aspect_ratio=dict(ratios),
            by_duration=dict(sorted(durations.items())),
            by_resolution=dict(resolutions),
            budget=self.budget,
            cost_usd=round(sum(money["model"].values()), 6),
            unpriced_jobs=sum(unpriced.values()),
            cost_by_model={k: round(v, 6) for k, v in money["model"].items()},
            cost_by_aspect_ratio={k: round(v, 6) for k, v in money["ratio"].items()},
            cost_by_duration={k: round(v, 6) for k, v in sorted(money["duration"].items())},
            unpriced_by_model=dict(unpriced),
        )


def load_manifest(
    path: str | Path,
    catalog: Catalog | str | Path | None = None,
    *,
    max_jobs: int | None = None,
) -> Manifest:
    """Read and validate a manifest; raise ManifestError listing every problem found.

    Jobs are counted before anything is expanded: a manifest over its `budget.max_jobs`, over
    ``max_jobs``, or (when neither is set) over DEFAULT_MAX_JOBS is refused at once.
    """
    if not isinstance(catalog, Catalog):
        catalog = load_catalog(catalog)
    return _Reader(Path(path), catalog, max_jobs).read()


class _Reader:
    def __init__(self, path: Path, catalog: Catalog, max_jobs: int | None = None):
        self.path = path
        self.name = str(path)
        self.catalog = catalog
        self.max_jobs = max_jobs
        self.problems = Problems()
        self.resolver = Resolver(self.problems, catalog)

    # -- problems ---------------------------------------------------------------------------
    def add(self, where: Where, name: str, message: str) -> None:
        self.problems.add(where, name, message)

    def at(self, line: int | None) -> Where:
        return Where(self.name, line)

    def unknown_keys(self, mapping: LDict, allowed: tuple[str, ...], prefix: str) -> None:
        for key in mapping:
            if key not in allowed:
                where = self.at(mapping.key_lines.get(key))
                self.add(where, f"{prefix}{key}", "unknown key" + suggest(key, allowed))

    # -- entry point ------------------------------------------------------------------------
    def read(self) -> Manifest:
        suffix = self.path.suffix.lower()
        if not self.path.is_file():
            read_text(self.path)  # raises the right "not found" / "is a directory" message
        if suffix not in (".yaml", ".yml", ".json", ".csv"):
            msg = f"unsupported manifest type {suffix or '(none)'!r}: use .yaml, .yml or .csv"
            raise ManifestError([Problem(Where(self.name), "", msg)])
        text = read_text(self.path)
        if suffix == ".csv":
            manifest = self.read_csv_manifest(text)
        else:
            manifest = self.read_yaml_manifest(text)
        if self.problems:
            # this file's problems first, then by line; a note (a guessed delimiter) may explain
            # them, so it goes with them
            items = self.problems.items + self.problems.notes
            items.sort(key=lambda p: (p.where.path != self.name, p.where.line or p.where.row or 0))
            raise ManifestError(items)
        assert manifest is not None
        return manifest

    def read_yaml_manifest(self, text: str) -> Manifest | None:
        try:
            doc, duplicates = load_located(text)
        except YamlSyntaxError as exc:
            self.add(self.at(exc.line), "", exc.message)
            return None
        for line, message in duplicates:
            self.add(self.at(line), "", message)
        if doc is None:
            self.add(self.at(None), "", "manifest is empty: add a `prompts:` list")
            return None
        if not isinstance(doc, LDict):
            self.add(
                self.at(getattr(doc, "line", 1)),
                "",
                "a manifest is a mapping with a `prompts:` list",
            )
            return None
        lines = doc.key_lines
        self.unknown_keys(doc, TOP_KEYS, "")

        name = self.manifest_name(doc.get("name"), self.at(lines.get("name")))
        model = self.scalartext_of(
            doc.get("model", DEFAULT_MODEL), self.at(lines.get("model")), "model"
        )
        defaults = self.mapping(doc.get("defaults"), self.at(lines.get("defaults")), "defaults")
        self.unknown_keys(defaults, DEFAULT_KEYS, "defaults.")
        vars_, var_lines = self.read_vars(doc.get("vars"), self.at(lines.get("vars")))
        budget = self.read_budget(doc.get("budget"), self.at(lines.get("budget")))

        raw_entries: list[tuple[Where, dict[str, Field]]] = []
        prompts = doc.get("prompts")
        if prompts is not None:
            if isinstance(prompts, LList):
                raw_entries += self.yaml_entries(prompts)
            else:
                self.add(self.at(lines.get("prompts")), "prompts", "must be a list of prompts")
        if "prompts_file" in doc:
            raw_entries += self.prompts_file(
                doc["prompts_file"], self.at(lines.get("prompts_file"))
            )
        if not raw_entries and "prompts" not in doc and "prompts_file" not in doc:
            self.add(
                self.at(doc.line), "prompts", "no prompts: add a `prompts:` list or `prompts_file:`"
            )
        elif not raw_entries and not self.problems:
            self.add(
                self.at(lines.get("prompts", lines.get("prompts_file"))),
                "prompts",
                "the manifest has no prompts",
            )
        default_fields = {
            k: Field(v, self.at(defaults.key_lines.get(k)), f"defaults.{k}")
            for k, v in defaults.items()
            if k in DEFAULT_KEYS
        }
        return self.finish(
            name, model or DEFAULT_MODEL, default_fields, vars_, var_lines, budget, raw_entries
        )

    def read_csv_manifest(self, text: str) -> Manifest | None:
        entries = csv_entries(self.problems, text, self.name)
        if not entries and not self.problems:
            self.add(self.at(None), "", "manifest is empty: it has no prompt rows")
        name = self.manifest_name(None, self.at(None))
        return self.finish(name, DEFAULT_MODEL, {}, {}, {}, Budget(), entries)

    # -- pieces -----------------------------------------------------------------------------
    def manifest_name(self, raw: Any, where: Where) -> str:
        if raw is None:
            return slug(self.path.stem) or "manifest"
        text = text_of(raw)
        if text is None or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
            hint = f"; e.g. {slug(text)}" if text and slug(text) else ""
            self.add(
                where,
                "name",
                f"must be letters, digits, '.', '_' or '-' (it names the output folder){hint}",
            )
            return slug(text or "") or "manifest"
        return text

    def scalartext_of(self, raw: Any, where: Where, name: str) -> str | None:
        text = text_of(raw)
        if text is None or not text.strip():
            self.add(where, name, "must be a single non-empty value")
            return None
        return text.strip()

    def mapping(self, raw: Any, where: Where, name: str) -> LDict:
        if raw is None:
            return LDict()
        if not isinstance(raw, LDict):
            self.add(where, name, "must be a mapping of keys to values")
            return LDict()
        return raw

    def read_vars(
        self, raw: Any, where: Where
    ) -> tuple[dict[str, tuple[str, ...]], dict[str, Where]]:
        mapping = self.mapping(raw, where, "vars")
        out: dict[str, tuple[str, ...]] = {}
        lines: dict[str, Where] = {}
        for name, value in mapping.items():
            at = self.at(mapping.key_lines.get(name))
            if not name.isidentifier():
                self.add(
                    at, f"vars.{name}", "a variable name is letters, digits and _ (like product)"
                )
                continue
            values: list[str] = []
            seen: set[str] = set()  # a set: var lists of 100,000 values stay linear
            for item, item_at in Field(value, at, name).items():
                text = text_of(item)
                if text is None or not text.strip():
                    self.add(
                        item_at, f"vars.{name}", "each value must be non-empty text or a number"
                    )
                elif text in seen:
                    self.add(item_at, f"vars.{name}", f"duplicate value {text!r}")
                else:
                    values.append(text)
                    seen.add(text)
            if isinstance(value, list) and not value:
                self.add(at, f"vars.{name}", "must list at least one value")
            elif values:
                out[name], lines[name] = tuple(values), at
        return out, lines

    def read_budget(self, raw: Any, where: Where) -> dict[str, tuple[Any, Where]]:
        mapping = self.mapping(raw, where, "budget")
        self.unknown_keys(mapping, BUDGET_KEYS, "budget.")
        out = {}
        for key in BUDGET_KEYS:
            if key in mapping:
                at = self.at(mapping.key_lines[key])
                value = mapping[key]
                if key == "max_cost":
                    if (
                        isinstance(value, bool)
                        or not isinstance(value, int | float)
                        or not math.isfinite(value)
                        or value <= 0
                    ):
                        self.add(
                            at,
                            "budget.max_cost",
                            f"{value!r} is not an amount: a positive "
                            "number of US dollars (e.g. 25 or 12.50)",
                        )
                    else:
                        out[key] = (float(value), at)
                elif type(value) is not int or value <= 0:
                    self.add(at, f"budget.{key}", "must be a positive whole number")
                else:
                    out[key] = (value, at)
        return out

    def yaml_entries(self, prompts: LList) -> list[tuple[Where, dict[str, Field]]]:
        entries = []
        for index, item in enumerate(prompts):
            where = self.at(prompts.lines[index])
            label = f"prompts[{index}]"
            if isinstance(item, LDict):
                self.unknown_keys(item, PROMPT_KEYS, f"{label}.")
                fields = {
                    k: Field(v, self.at(item.key_lines[k]), f"{label}.{k}")
                    for k, v in item.items()
                    if k in PROMPT_KEYS
                }
                if "prompt" not in fields:
                    self.add(where, f"{label}.prompt", "missing: each entry needs a `prompt:`")
                    continue
                entries.append((where, fields))
            elif text_of(item) is not None:
                entries.append((where, {"prompt": Field(item, where, label)}))
            else:
                self.add(where, label, "must be a prompt text or a mapping with `prompt:`")
        return entries

    def prompts_file(self, raw: Any, where: Where) -> list[tuple[Where, dict[str, Field]]]:
        text = text_of(raw)
        if not text:
            self.add(where, "prompts_file", "must be the path of a CSV file")
            return []
        path = self.path.parent / text
        try:
            content = read_text(path)
        except ManifestError as exc:
            for problem in exc.problems:
                self.add(where, "prompts_file", f"{path}: {problem.message}")
            return []
        return csv_entries(self.problems, content, str(path))

    # -- resolving entries into specs -------------------------------------------------------
    def finish(
        self,
        name: str,
        model: str,
        defaults: dict[str, Field],
        vars_: dict[str, tuple[str, ...]],
        var_lines: dict[str, Where],
        budget_fields: dict[str, tuple[Any, Where]] | Budget,
        entries: list[tuple[Where, dict[str, Field]]],
    ) -> Manifest | None:
        used: set[str] = set()
        specs = []
        for where, fields in entries:
            spec = self.resolver.spec(where, fields, defaults, model, vars_, used)
            if spec is not None:
                specs.append(spec)
        templates_ok = not any("brace" in p.message for p in self.problems.items)
        for var, at in var_lines.items():
            if var not in used and templates_ok:
                self.add(at, f"vars.{var}", f"defined but no prompt uses {{{var}}}")
        if isinstance(budget_fields, Budget):
            budget, budget_fields = budget_fields, {}
        else:
            budget = Budget(
                max_jobs=budget_fields.get("max_jobs", (None,))[0],
                max_video_seconds=budget_fields.get("max_video_seconds", (None,))[0],
                max_cost=budget_fields.get("max_cost", (None,))[0],
            )
        tag_names = tuple(dict.fromkeys(t for s in specs for t in s.tags))
        manifest = Manifest(
            path=self.name,
            name=name,
            model=model,
            prompts=tuple(specs),
            var_names=tuple(v for v in vars_ if v in used),
            tag_names=tag_names,
            budget=budget,
            catalog=self.catalog,
            notes=tuple(self.problems.notes),
        )
        # count first (a product of list lengths): a manifest over a job limit is refused before
        # a single job is made, so ten million jobs cost milliseconds, not minutes and gigabytes
        summary = manifest.summary()
        if not self.over_job_limits(summary.jobs, budget, budget_fields):
            self.resolver.check_expansion(manifest.prompts, manifest.model)
        if self.problems:
            return None  # a budget over a partly valid manifest would mislead
        if (
            "max_video_seconds" in budget_fields
            and budget.max_video_seconds is not None
            and summary.video_seconds > budget.max_video_seconds
        ):
            self.add(
                budget_fields["max_video_seconds"][1],
                "budget.max_video_seconds",
                f"the manifest asks for {summary.video_seconds:,} s of video, over the budget of "
                f"{budget.max_video_seconds:,} s",
            )
        if "max_cost" in budget_fields:
            self.check_cost(summary, budget_fields["max_cost"])
        return manifest

    def check_cost(self, summary: PlanSummary, limit: tuple[float, Where]) -> None:
        """budget.max_cost: the catalog's estimate must be within it, and every job priced."""
        amount, at = limit
        if summary.unpriced_jobs:
            models = ", ".join(sorted(summary.unpriced_by_model))
            self.add(
                at,
                "budget.max_cost",
                f"{summary.unpriced_jobs:,} jobs have no price in the catalog ({models}), so the "
                f"limit of {usd(amount)} cannot be checked; give usd_per_second with --catalog",
            )
        elif summary.cost_usd > amount + 1e-9:
            self.add(
                at,
                "budget.max_cost",
                f"the manifest is estimated at {usd(summary.cost_usd)} "
                f"({summary.video_seconds:,} s of video at the catalog's prices), over the "
                f"budget of {usd(amount)}",
            )

    def over_job_limits(
        self, jobs: int, budget: Budget, budget_fields: dict[str, tuple[int, Where]]
    ) -> bool:
        """Add a problem for each job limit ``jobs`` exceeds; True when any is exceeded.

        With problems already found, ``jobs`` counts only the valid entries: a lower bound.
        """
        count = f"at least {jobs:,}" if self.problems else f"{jobs:,}"
        over = False
        if "max_jobs" in budget_fields and budget.max_jobs is not None and jobs > budget.max_jobs:
            self.add(
                budget_fields["max_jobs"][1],
                "budget.max_jobs",
                f"the manifest expands to {count} jobs, over the budget of {budget.max_jobs:,}",
            )
            over = True
        ceiling = self.max_jobs
        if ceiling is None and budget.max_jobs is None:
            ceiling = DEFAULT_MAX_JOBS
        if ceiling is not None and jobs > ceiling:
            default = "" if self.max_jobs is not None else " (the default)"
            self.add(
                self.at(None),
                "--max-jobs",
                f"the manifest expands to {count} jobs, over the limit of {ceiling:,}{default}; "
                "raise it with --max-jobs N or budget.max_jobs",
            )
            over = True
        return over
