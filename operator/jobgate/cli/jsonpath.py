"""`-o jsonpath=TEMPLATE`: kubectl's JSONPath templates over a report's JSON form.

The dialect of `kubectl get -o jsonpath` (k8s.io/client-go/util/jsonpath),
written for jobgate: text with ``{...}`` actions; an action is a path
(``.jobs[*].name``, ``['key']``, ``[0]``, ``[-1]``, ``[1:3]``, ``..name``,
``[?(@.position == 1)]``, ``[a,b]``), a string literal (``{"\\n"}``), or
``range PATH`` ... ``end``. Several results of one action print space
separated; strings print as they are, objects and lists as JSON, null and
missing keys as nothing (kubectl's --allow-missing-template-keys default).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class TemplateError(ValueError):
    """A template that does not parse; the message says where."""


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Path:
    path: str


@dataclass(frozen=True)
class _Range:
    path: str
    body: list[_Node]


_Node = _Text | _Path | _Range


def render_template(template: str, data: Any) -> str:
    return "".join(_run(_parse(template), data, data))


def check_template(template: str) -> None:
    """Raise TemplateError now rather than after reading the cluster."""
    _parse(template)


# --- parsing -------------------------------------------------------------------------------------


def _actions(template: str) -> Iterator[tuple[bool, str]]:
    """(is_action, text) pieces; quotes inside an action may hold braces."""
    i, literal = 0, []
    while i < len(template):
        c = template[i]
        if c != "{":
            literal.append(c)
            i += 1
            continue
        if literal:
            yield False, "".join(literal)
            literal = []
        j, quote = i + 1, ""
        while j < len(template) and (quote or template[j] != "}"):
            if quote and template[j] == "\\":
                j += 1
            elif template[j] in "\"'":
                quote = "" if quote == template[j] else quote or template[j]
            j += 1
        if j >= len(template):
            raise TemplateError(f"unclosed action at column {i + 1}: {template[i:]}")
        yield True, template[i + 1 : j].strip()
        i = j + 1
    if literal:
        yield False, "".join(literal)


def _parse(template: str) -> list[_Node]:
    stack: list[list[_Node]] = [[]]
    ranges: list[str] = []
    for is_action, text in _actions(template):
        if not is_action:
            stack[-1].append(_Text(text))
        elif text.startswith("range ") or text == "range":
            ranges.append(text[len("range") :].strip())
            stack.append([])
        elif text == "end":
            if not ranges:
                raise TemplateError("{end} without {range}")
            body = stack.pop()
            stack[-1].append(_Range(ranges.pop(), body))
        elif text[:1] in "\"'":
            stack[-1].append(_Text(_literal(text)))
        else:
            _segments(text)  # fail early on a malformed path
            stack[-1].append(_Path(text))
    if ranges:
        raise TemplateError(f"{{range {ranges[-1]}}} without {{end}}")
    return stack[0]


def _literal(text: str) -> str:
    if len(text) < 2 or text[-1] != text[0]:
        raise TemplateError(f"unterminated string {text}")
    inner = text[1:-1] if text[0] == '"' else text[1:-1].replace('"', '\\"')
    try:
        value = json.loads(f'"{inner}"', strict=False)
    except ValueError as e:
        raise TemplateError(f"bad string {text}: {e}") from None
    return str(value)


_SEGMENT = re.compile(
    r"""\.\.(?P<deep>[\w-]+|\*)"""
    r"""|\.(?P<name>[\w-]+|\*)"""
    r"""|\[(?P<bracket>(?:'[^']*'|"[^"]*"|[^\]'"])*)\]"""
)


def _segments(path: str) -> list[tuple[str, str]]:
    """('deep' | 'name' | 'bracket', text) for each step of the path."""
    rest = path
    if rest[:1] in ("$", "@"):
        rest = rest[1:]
    if rest and rest[0] not in ".[":
        rest = "." + rest  # kubectl accepts {name} for {.name}
    steps, pos = [], 0
    while pos < len(rest):
        found = _SEGMENT.match(rest, pos)
        if found is None:
            raise TemplateError(f"cannot parse {path!r} at {rest[pos:]!r}")
        kind = found.lastgroup or "name"
        steps.append((kind, found.group(kind)))
        pos = found.end()
    return steps


# --- evaluation ----------------------------------------------------------------------------------


def _run(nodes: list[_Node], root: Any, current: Any) -> Iterator[str]:
    for node in nodes:
        if isinstance(node, _Text):
            yield node.text
        elif isinstance(node, _Path):
            yield " ".join(_text(v) for v in _evaluate(node.path, root, current))
        else:
            found = _evaluate(node.path, root, current)
            items = found[0] if len(found) == 1 and isinstance(found[0], list) else found
            for item in items:
                yield from _run(node.body, root, item)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _evaluate(path: str, root: Any, current: Any) -> list[Any]:
    values = [root if path.startswith("$") else current]
    for kind, text in _segments(path):
        if kind == "name":
            values = [v for x in values for v in _children(x, None if text == "*" else text)]
        elif kind == "deep":
            values = [v for x in values for d in _descendants(x) for v in _children(d, None if text == "*" else text)]
        else:
            values = [v for x in values for v in _bracket(x, text.strip(), root)]
    return values


def _children(value: Any, name: str | None) -> list[Any]:
    if isinstance(value, dict):
        if name is None:
            return list(value.values())
        return [value[name]] if name in value else []
    if isinstance(value, list) and name is None:
        return list(value)
    return []


def _descendants(value: Any) -> Iterator[Any]:
    yield value
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        yield from _descendants(child)


def _bracket(value: Any, text: str, root: Any) -> list[Any]:
    if text == "*":
        return _children(value, None)
    if text.startswith("?(") and text.endswith(")"):
        items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else []
        return [item for item in items if _holds(text[2:-1].strip(), root, item)]
    results: list[Any] = []
    for part in _split(text):
        if part[:1] in "'\"":
            results += _children(value, part[1:-1])
        elif ":" in part:
            if isinstance(value, list):
                bounds = [int(b) if b.strip() else None for b in part.split(":")]
                results += value[slice(*bounds)]
        elif isinstance(value, list):
            try:
                index = int(part)
            except ValueError:
                raise TemplateError(f"bad index [{part}]") from None
            if -len(value) <= index < len(value):
                results.append(value[index])
        else:
            results += _children(value, part)
    return results


def _split(text: str) -> list[str]:
    return [p.strip() for p in re.findall(r"""'[^']*'|"[^"]*"|[^,]+""", text)]


_COMPARISON = re.compile(r"^(?P<left>@[^\s=!<>]*)\s*(?P<op>==|!=|<=|>=|<|>)\s*(?P<right>.+)$")


def _holds(condition: str, root: Any, item: Any) -> bool:
    found = _COMPARISON.match(condition)
    if found is None:  # [?(@.name)]: the key exists and is not null
        return any(v is not None for v in _evaluate(condition, root, item))
    left = _evaluate(found.group("left"), root, item)
    right_text = found.group("right").strip()
    if right_text[:1] in "'\"":
        right: Any = right_text[1:-1]
    else:
        try:
            right = json.loads(right_text)
        except ValueError:
            right = right_text
    op = found.group("op")
    for value in left:
        try:
            if (
                (op == "==" and value == right)
                or (op == "!=" and value != right)
                or (op == "<" and value < right)
                or (op == ">" and value > right)
                or (op == "<=" and value <= right)
                or (op == ">=" and value >= right)
            ):
                return True
        except TypeError:
            continue
    return False
