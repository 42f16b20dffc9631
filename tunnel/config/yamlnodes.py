"""Line-numbered YAML walking shared by the config loader and the key file reader.

We compose (not load) the YAML so every value keeps its node and therefore its line and column; the
walker reports each problem as `file:line:col: path: message` and keeps going, so an admin sees every
problem of a file in one run (ARCHITECTURE.md principle 11). Nothing here falls back to a default.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from tunnel.errors import ConfigError

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
BOOL = "tag:yaml.org,2002:bool"
FLOAT = "tag:yaml.org,2002:float"
NULL = "tag:yaml.org,2002:null"
TIMESTAMP = "tag:yaml.org,2002:timestamp"
MERGE = "tag:yaml.org,2002:merge"
_TAG_NAMES = {STR: "a string", INT: "an integer", BOOL: "a boolean", FLOAT: "a number",
              NULL: "an empty value", TIMESTAMP: "a date", MERGE: "a merge key (<<), which is not supported"}
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, order=True)
class Problem:
    """One finding; ordered by file, line, column so the report reads top to bottom."""

    file: str
    line: int  # 1-based; 0 when the problem concerns the whole file
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return ": ".join(part for part in (where, self.path, self.message) if part)

    def about(self, message: str) -> Problem:
        """A problem at the same place (used for a key file named by this config node)."""
        return Problem(self.file, self.line, self.col, self.path, message)


@dataclass
class Problems:
    """The sink every check writes into; raised once, at the end, as one ConfigError."""

    found: list[Problem] = field(default_factory=list)

    def add(self, problem: Problem) -> None:
        self.found.append(problem)

    def __bool__(self) -> bool:
        return bool(self.found)

    def lines(self) -> list[str]:
        return [str(p) for p in sorted(set(self.found))]  # a key file shared by two tunnels is read twice

    def raise_if_any(self, error: type[ConfigError] = ConfigError) -> None:
        if self.found:
            raise error(self.lines())


class FileProblem(Exception):
    """A file could not be read; the text is a predicate such as 'does not exist'."""


def quote(text: str, limit: int = 60) -> str:
    """A user value made safe for a one-line message: escaped, quoted and shortened."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def key_path(base: str, key: str) -> str:
    name = key if _PLAIN_KEY.fullmatch(key) else f"[{quote(key)}]"
    return f"{base}.{name}" if base else name


def describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")


# -- reading and parsing ---------------------------------------------------------------------------


def read_regular_file(path: Path, max_bytes: int,
                      check: Callable[[os.stat_result], str | None] | None = None) -> bytes:
    """Read a small regular file. O_NONBLOCK keeps a FIFO from hanging us, and the checks run on the
    descriptor we read (fstat), not on a path that could be swapped in between."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileProblem("does not exist") from None
    except PermissionError:
        raise FileProblem("is not readable (permission denied)") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise FileProblem(f"cannot be opened: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileProblem("is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise FileProblem("is not a regular file")
        refusal = check(st) if check else None
        if refusal:
            raise FileProblem(refusal)
        if st.st_size > max_bytes:
            raise FileProblem(f"is larger than {max_bytes} bytes")
        with os.fdopen(os.dup(fd), "rb") as stream:
            return stream.read(max_bytes + 1)
    except OSError as exc:
        raise FileProblem(f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that rejects aliases: they would let one node appear under two paths, and a
    config small enough to review has no need for them."""

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            message = "YAML aliases (*name) are not supported"
            raise yaml.composer.ComposerError(None, None, message, event.start_mark)
        return super().compose_node(parent, index)


def parse_document(data: bytes, file: str, sink: Problems, expected: str) -> Node | None:
    """UTF-8 bytes -> the root node, or None after reporting why not. Never raises."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8")  # valid: the first bad byte is at exc.start
        line, col = _line_col(before, len(before))  # columns count characters, as PyYAML's marks do
        sink.add(Problem(file, line, col, "", "file is not UTF-8 text"))
        return None
    try:
        root = yaml.compose(text, Loader=_NoAliasLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        detail = ", ".join(part for part in (exc.context, exc.problem) if part)  # PyYAML's own reading order
        if exc.problem == "mapping values are not allowed here":
            detail += " (quote a value that contains ': ' or ends in ':', such as '::' or 'fd00::')"
        sink.add(Problem(file, line, col, "", f"YAML syntax error: {detail}"))
        return None
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        sink.add(Problem(file, line, col, "", f"character U+{code:04X} is not allowed in YAML"))
        return None
    except yaml.YAMLError:
        sink.add(Problem(file, 1, 1, "", "YAML syntax error"))
        return None
    except RecursionError:
        sink.add(Problem(file, 1, 1, "", "YAML nesting is too deep"))
        return None
    if root is None:
        sink.add(Problem(file, 1, 1, "", f"file is empty; expected {expected}"))
    return root


def _line_col(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


# -- walking -----------------------------------------------------------------------------------------


class Doc:
    """Typed accessors over one composed file. Each returns None after reporting a problem, and
    remembers where every path it accepted was, for the cross-field checks that run afterwards."""

    def __init__(self, file: str, sink: Problems, echo_unknown_keys: bool = True) -> None:
        self.file = file
        self.sink = sink
        # A key file must not echo an unknown key: it may be key material pasted in the wrong place.
        self.echo_unknown_keys = echo_unknown_keys
        self.where: dict[str, Problem] = {}

    def at(self, node: Node, path: str) -> Problem:
        mark = node.start_mark
        return Problem(self.file, mark.line + 1, mark.column + 1, path, "")

    def error(self, node: Node, path: str, message: str) -> None:
        self.sink.add(self.at(node, path).about(message))

    def error_at(self, path: str, message: str) -> None:
        """Report at a path already accepted by this walker (cross-field checks)."""
        self.sink.add(self.where[path].about(message))

    def checkpoint(self) -> int:
        return len(self.sink.found)

    def clean_since(self, checkpoint: int) -> bool:
        """True when nothing was reported since checkpoint: the section may become a model object."""
        return len(self.sink.found) == checkpoint

    def _seen(self, node: Node, path: str) -> None:
        self.where[path] = self.at(node, path)

    def mapping(self, node: Node, path: str, required: Iterable[str] = (),
                optional: Iterable[str] = ()) -> dict[str, Node] | None:
        """The known keys of a mapping. Unknown, duplicate and missing keys are each a problem."""
        if not isinstance(node, MappingNode):
            self.error(node, path, f"expected a mapping, got {describe(node)}")
            return None
        self._seen(node, path)
        required, allowed = set(required), set(required) | set(optional)
        found: dict[str, Node] = {}
        first: dict[str, Node] = {}
        for key_node, value in node.value:
            if not (isinstance(key_node, ScalarNode) and key_node.tag == STR):
                self.error(key_node, path, f"keys must be plain strings, got {describe(key_node)}")
                continue
            key = key_node.value
            here = key_path(path, key) if self.echo_unknown_keys or key in allowed else path
            if key in first:
                line = first[key].start_mark.line + 1
                self.error(key_node, here, f"duplicate key (first defined at line {line})")
                continue
            first[key] = key_node
            if key not in allowed:
                hint = _suggest(key, allowed) if self.echo_unknown_keys else _expected(allowed)
                self.error(key_node, here, "unknown key" + hint)
                continue
            found[key] = value
        for key in sorted(required - found.keys() - first.keys()):
            self.error(node, key_path(path, key), "missing required key")
        return found

    def sequence(self, node: Node, path: str, non_empty: bool = False) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, path, f"expected a list, got {describe(node)}")
            return None
        self._seen(node, path)
        if non_empty and not node.value:
            self.error(node, path, "must not be empty")
            return None
        return list(node.value)

    def scalar_text(self, node: Node, path: str, what: str, tags: Iterable[str] = (STR,)) -> str | None:
        """The original text of a scalar whose resolved tag is one of tags (so `yes` is not a name)."""
        tags = tuple(tags)
        if not (isinstance(node, ScalarNode) and node.tag in tags):
            # Only plain-string fields get the hint: it echoes the value, which a key file must never do.
            quotable = isinstance(node, ScalarNode) and tags == (STR,) and node.tag != NULL
            hint = f" (quote it: {quote(node.value)})" if quotable else ""
            self.error(node, path, f"expected {what}, got {describe(node)}{hint}")
            return None
        self._seen(node, path)
        return node.value

    def string(self, node: Node, path: str, pattern: re.Pattern[str], rule: str) -> str | None:
        text = self.scalar_text(node, path, "a string")
        if text is not None and not pattern.fullmatch(text):
            self.error(node, path, f"{quote(text)} is not valid: {rule}")
            return None
        return text

    def choice(self, node: Node, path: str, choices: Iterable[str]) -> str | None:
        choices = tuple(choices)
        text = self.scalar_text(node, path, "a string")
        if text is not None and text not in choices:
            self.error(node, path, f"{quote(text)} is not one of {', '.join(choices)}")
            return None
        return text

    def boolean(self, node: Node, path: str) -> bool | None:
        text = self.scalar_text(node, path, "true or false", (BOOL,))
        return None if text is None else text.lower() in ("true", "yes", "on")

    def integer(self, node: Node, path: str, lo: int, hi: int) -> int | None:
        """A decimal integer in lo..hi. Hex, octal (YAML 1.1 `010` = 8) and sexagesimal forms are
        refused: a config value should mean what it looks like."""
        text = self.scalar_text(node, path, "an integer", (INT,))
        if text is None:
            return None
        if not _DECIMAL.fullmatch(text):
            self.error(node, path, f"{quote(text)} must be written as a decimal integer")
            return None
        value = int(text) if len(text) <= 24 else hi + 1  # also stays clear of int()'s digit limit
        if not lo <= value <= hi:
            self.error(node, path, f"{quote(text)} is out of range {lo}..{hi}")
            return None
        return value


def _suggest(key: str, allowed: set[str]) -> str:
    close = get_close_matches(key, sorted(allowed), n=1)
    return f"; did you mean {close[0]!r}?" if close else _expected(allowed)


def _expected(allowed: set[str]) -> str:
    return f"; expected one of: {', '.join(sorted(allowed))}" if allowed else ""
