"""Safe YAML loading that keeps line numbers and reads scalars the YAML 1.2 way.

PyYAML follows YAML 1.1, where ``16:9`` is the integer 969 and ``on`` is True; manifests are
full of aspect ratios, so we resolve only 1.2-core scalars and keep every other plain scalar
as text. Mappings and sequences come back as ``LDict``/``LList`` that know their lines.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_NODES = 500_000  # an alias bomb expands past this; a 50,000-prompt manifest does not


class LDict(dict):
    """A mapping from YAML: ``line`` of the mapping and ``key_lines[key]`` of each key."""

    line: int = 0
    key_lines: dict[str, int]


class LList(list):
    """A sequence from YAML: ``line`` of the sequence and ``lines[i]`` of each item."""

    line: int = 0
    lines: list[int]


class YamlSyntaxError(Exception):
    def __init__(self, line: int | None, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


# libyaml's parser when this PyYAML has it (a manifest with a 5,000-value vars list loads in
# 0.08 s instead of 0.25); the constructor and resolver below are the same Python code either way
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE


class _Loader(_Base):
    yaml_implicit_resolvers: dict = {}  # noqa: RUF012  (PyYAML's class-level registry)


_Loader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in [
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^[-+]?[0-9]+$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*|[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+)"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+0123456789."),
    ),
]:
    _Loader.add_implicit_resolver(_tag, re.compile(_regexp), _first)
_Loader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: int(node.value, 10))


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _Walker:
    def __init__(self, loader: _Loader, duplicates: list[tuple[int, str]]):
        self.loader = loader
        self.duplicates = duplicates
        self.visited = 0

    def walk(self, node: Node) -> Any:
        self.visited += 1
        if self.visited > MAX_NODES:
            raise YamlSyntaxError(_line(node), "document expands to too many values (alias bomb?)")
        if isinstance(node, ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except (yaml.YAMLError, ValueError) as exc:
                problem = getattr(exc, "problem", None) or str(exc)
                raise YamlSyntaxError(_line(node), f"cannot read value: {problem}") from None
        if isinstance(node, SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise YamlSyntaxError(_line(node), f"unsupported tag {node.tag}")
            out = LList(self.walk(item) for item in node.value)
            out.line, out.lines = _line(node), [_line(item) for item in node.value]
            return out
        if isinstance(node, MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                raise YamlSyntaxError(_line(node), f"unsupported tag {node.tag}")
            self.loader.flatten_mapping(node)  # resolves `<<: *defaults` merge keys
            result = LDict()
            result.line, result.key_lines = _line(node), {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    raise YamlSyntaxError(_line(key_node), "a key must be a plain name")
                key = key_node.value
                if key in result:
                    first = result.key_lines[key]
                    self.duplicates.append(
                        (_line(key_node), f"duplicate key {key!r} (first at line {first})")
                    )
                    continue
                result[key] = self.walk(value_node)
                result.key_lines[key] = _line(key_node)
            return result
        raise YamlSyntaxError(_line(node), "unsupported YAML node")  # pragma: no cover


def load_located(text: str) -> tuple[Any, list[tuple[int, str]]]:
    """Parse one YAML document; return (value, [(line, duplicate-key message)]).

    Raises YamlSyntaxError (with the line where known) for anything that is not a plain,
    safe YAML document: syntax errors, several documents, python/* tags, alias bombs.
    """
    duplicates: list[tuple[int, str]] = []
    loader: _Loader | None = None
    if bad := _NON_PRINTABLE.search(text):  # NUL and other unprintable characters
        line = text.count("\n", 0, bad.start()) + 1
        raise YamlSyntaxError(
            line, f"invalid YAML: character #x{ord(bad.group()):04x} is not allowed"
        )
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, duplicates
        return _Walker(loader, duplicates).walk(node), duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(m for m in (exc.context, exc.problem) if m) or "invalid YAML"
        raise YamlSyntaxError(line, "invalid YAML: " + " ".join(message.split())) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        char = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise YamlSyntaxError(line, f"invalid YAML: character {char} is not allowed") from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(None, "invalid YAML: " + " ".join(str(exc).split())) from None
    except RecursionError:
        raise YamlSyntaxError(None, "invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
