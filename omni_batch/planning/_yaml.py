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


class _PySafeLoader(yaml.SafeLoader):
    """PyYAML's pure-Python loader, reading tabs as libyaml does.

    The pure scanner refuses every tab outside quotes; libyaml takes a tab wherever YAML allows
    one: between tokens in flow context (tab-indented JSON), after ``key:``, at the end of a
    line, inside a plain scalar. Same answers without libyaml; tabs in block indentation are
    refused by ``_refuse_indenting_tabs`` for both, with one message.
    """

    def scan_to_next_token(self) -> None:
        # PyYAML's method with libyaml's whitespace rule (scanner.c: "Tabs are allowed in the
        # flow context, and in the block context but not at the beginning of the line or after
        # '-', '?', or ':' (complex value)")
        if self.index == 0 and self.peek() == "\ufeff":
            self.forward()
        found = False
        while not found:
            while self.peek() == " " or (
                self.peek() == "\t" and (self.flow_level or not self.allow_simple_key)
            ):
                self.forward()
            if self.peek() == "#":
                while self.peek() not in "\0\r\n\x85\u2028\u2029":
                    self.forward()
            if self.scan_line_break():
                if not self.flow_level:
                    self.allow_simple_key = True
            else:
                found = True

    def scan_plain_spaces(self, indent: int, start_mark: Any) -> list[str] | None:
        # PyYAML's method with tabs taken as blanks, as libyaml takes them (a tab leading a
        # continuation line in block context is refused afterwards, with the indentation tabs)
        chunks: list[str] = []
        length = 0
        while self.peek(length) in " \t":
            length += 1
        whitespaces = self.prefix(length)
        self.forward(length)
        if self.peek() in "\r\n\x85\u2028\u2029":
            line_break = self.scan_line_break()
            self.allow_simple_key = True
            if self._document_marker():
                return None
            breaks = []
            while self.peek() in " \t\r\n\x85\u2028\u2029":
                if self.peek() == "\t" and self.column < indent:  # as libyaml
                    raise yaml.scanner.ScannerError(
                        "while scanning a plain scalar",
                        start_mark,
                        "found a tab character that violates indentation",
                        self.get_mark(),
                    )
                if self.peek() in " \t":
                    self.forward()
                else:
                    breaks.append(self.scan_line_break())
                    if self._document_marker():
                        return None
            if line_break != "\n":
                chunks.append(line_break)
            elif not breaks:
                chunks.append(" ")
            chunks.extend(breaks)
        elif whitespaces:
            chunks.append(whitespaces)
        return chunks

    def scan_block_scalar_indicators(self, start_mark: Any) -> tuple[bool | None, int | None]:
        # PyYAML's (`|+2`, `>-`, ...) with a tab after the indicators taken as a blank
        chomping: bool | None = None
        increment: int | None = None
        for _ in range(2):
            ch = self.peek()
            if ch in "+-" and chomping is None:
                chomping = ch == "+"
            elif ch in "0123456789" and increment is None:
                if ch == "0":
                    raise yaml.scanner.ScannerError(
                        "while scanning a block scalar",
                        start_mark,
                        "expected indentation indicator in the range 1-9, but found 0",
                        self.get_mark(),
                    )
                increment = int(ch)
            else:
                break
            self.forward()
        if (ch := self.peek()) not in "\0 \t\r\n\x85\u2028\u2029":
            raise yaml.scanner.ScannerError(
                "while scanning a block scalar",
                start_mark,
                f"expected chomping or indentation indicators, but found {ch!r}",
                self.get_mark(),
            )
        return chomping, increment

    def scan_block_scalar_ignored_line(self, start_mark: Any) -> None:
        while self.peek() in " \t":  # blanks after `|` / `>`, as libyaml takes them
            self.forward()
        super().scan_block_scalar_ignored_line(start_mark)

    def _document_marker(self) -> bool:
        return self.prefix(3) in ("---", "...") and self.peek(3) in "\0 \t\r\n\x85\u2028\u2029"


def _with_yaml12_scalars(base: type) -> type:
    """A loader class over ``base`` that resolves only YAML 1.2-core scalars."""

    class Loader(base):
        yaml_implicit_resolvers: dict = {}  # noqa: RUF012  (PyYAML's class-level registry)

    Loader.yaml_implicit_resolvers = {}
    for tag, regexp, first in [
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
        Loader.add_implicit_resolver(tag, re.compile(regexp), first)
    Loader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: int(node.value, 10))
    return Loader


# libyaml's parser when this PyYAML has it (a manifest with a 5,000-value vars list loads in
# 0.08 s instead of 0.25); the constructor and resolver are the same Python code either way
PY_LOADER: Any = _with_yaml12_scalars(_PySafeLoader)
C_LOADER: Any = _with_yaml12_scalars(yaml.CSafeLoader) if hasattr(yaml, "CSafeLoader") else None
_Loader: Any = C_LOADER or PY_LOADER
_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE
_TAB_INDENTED = re.compile(r"(?:^|[\n\r\x85\u2028\u2029])[ ]*\t")  # a tab leading a line
_LINE_BREAK = re.compile(r"\r\n|[\n\r\x85\u2028\u2029]")  # YAML's line breaks (its Reader's)
TAB_MESSAGE = "invalid YAML: a tab character in indentation; YAML indents with spaces"
TAB_AFTER_MESSAGE = "invalid YAML: a tab character where YAML wants a space"


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _indenting_tabs(text: str) -> tuple[dict[int, int], list[str]]:
    """{line (1-based): columns of leading whitespace} of every line with a tab in it, and the
    lines (none when no line has one: the usual case costs one regex search)."""
    if not _TAB_INDENTED.search(text):
        return {}, []
    found = {}
    lines = _LINE_BREAK.split(text)
    for number, line in enumerate(lines, start=1):
        blank = len(line) - len(line.lstrip(" \t"))
        if "\t" in line[:blank]:
            found[number] = blank
    return found, lines


def _char_at(text: str, line: int, column: int) -> str:
    """The character at a parser's mark (0-based line and column), "" past the end."""
    lines = _LINE_BREAK.split(text, maxsplit=line + 1)
    return lines[line][column : column + 1] if line < len(lines) else ""


def _refuse_indenting_tabs(node: Node | None, tabs: dict[int, int], lines: list[str]) -> None:
    """Raise at the first line indented with a tab outside the places YAML lets one lead a line.

    A parser may accept such a tab (libyaml does, in a plain scalar's next line); we do not, so
    the answer is the same with and without libyaml. Allowed: inside a block scalar (`|`, `>`)
    after its first line of text (which sets its indentation; after it a tab is text), inside a
    quoted scalar and inside a flow collection (`[...]`, `{...}`, JSON).
    """
    covered = [0] * (max(tabs) + 2)  # +1 from a span's first line, -1 after its last
    stack, seen = [node] if node is not None else [], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        flow = getattr(item, "flow_style", False) if not isinstance(item, ScalarNode) else False
        style = item.style if isinstance(item, ScalarNode) else None
        if flow or style in ("|", ">", '"', "'"):
            first, last = item.start_mark.line + 1, item.end_mark.line  # 0-based, first excluded
            if item.end_mark.column == 0:
                last -= 1  # the span ended with the line before
            if style in ("|", ">"):  # tabs before the first line of text would be indentation
                first = next((n for n in range(first, last + 1) if lines[n].strip(" \t")), last)
                first += 1
            first, last = first + 1, last + 1  # 1-based
            if first <= last and first < len(covered):
                covered[first] += 1
                covered[min(last + 1, len(covered) - 1)] -= 1
        elif isinstance(item, SequenceNode):
            stack.extend(item.value)
        elif isinstance(item, MappingNode):
            stack.extend(part for pair in item.value for part in pair)
    depth = 0
    for number in range(1, len(covered)):
        depth += covered[number]
        if number in tabs and depth <= 0:
            raise YamlSyntaxError(number, TAB_MESSAGE)


class _Walker:
    def __init__(self, loader: Any, duplicates: list[tuple[int, str]]):
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
    loader: Any = None
    if bad := _NON_PRINTABLE.search(text):  # NUL and other unprintable characters
        line: int | None = text.count("\n", 0, bad.start()) + 1
        raise YamlSyntaxError(
            line, f"invalid YAML: character #x{ord(bad.group()):04x} is not allowed"
        )
    tabs, lines = _indenting_tabs(text)
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if tabs:
            _refuse_indenting_tabs(node, tabs, lines)
        if node is None:
            return None, duplicates
        return _Walker(loader, duplicates).walk(node), duplicates
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        if line in tabs and mark is not None and mark.column < tabs[line]:
            raise YamlSyntaxError(line, TAB_MESSAGE) from None  # what the parser tripped on
        if mark is not None and _char_at(text, mark.line, mark.column) == "\t":
            raise YamlSyntaxError(line, TAB_AFTER_MESSAGE) from None
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
