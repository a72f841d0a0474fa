"""Field and label selectors with the real server's syntax and error answers.

Field selectors only accept the labels each resource registers (an unknown label is a
400, as on a real server, so a driver cannot come to depend on a selector that
production would refuse). Label selectors follow ``k8s.io/apimachinery/pkg/labels``:
``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k``, ``!k``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import bad_request

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class FieldTerm:
    field: str
    value: str
    equal: bool


def _split_unescaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` not preceded by a backslash escape (field selector values escape , = \\)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt not in ",=\\":
                raise bad_request(f"invalid field selector: invalid escape sequence: \\{nxt}")
            out.append(nxt)
            i += 2
            continue
        if value[i] in ",=":
            raise bad_request(f"invalid field selector: unescaped {value[i]} in {value!r}")
        out.append(value[i])
        i += 1
    return "".join(out)


def parse_field_selector(
    text: str, allowed: Mapping[str, Callable[[JsonObject], str]], kind: str = ""
) -> list[FieldTerm]:
    """Parse ``a=b,c!=d`` and check every field against the resource's registered labels."""
    terms: list[FieldTerm] = []
    if not text.strip():
        return terms
    for raw in _split_unescaped(text, ","):
        part = raw.strip()
        if not part:
            continue
        for op, is_equal in (("!=", False), ("==", True), ("=", True)):
            idx = _find_unescaped(part, op)
            if idx >= 0:
                field, value = part[:idx].strip(), _unescape(part[idx + len(op) :])
                equal = is_equal
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        if field not in allowed:
            where = f" for {kind}" if kind else ""
            raise bad_request(f"field label not supported{where}: {field}")
        terms.append(FieldTerm(field, value, equal))
    return terms


def _find_unescaped(text: str, op: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(op, i):
            return i
        i += 1
    return -1


def field_matcher(
    terms: list[FieldTerm], allowed: Mapping[str, Callable[[JsonObject], str]]
) -> Callable[[JsonObject], bool]:
    def match(obj: JsonObject) -> bool:
        for term in terms:
            actual = allowed[term.field](obj)
            if (actual == term.value) != term.equal:
                return False
        return True

    return match


_LABEL_TOKEN = re.compile(r"\s*(?:(?P<op>!=|==|=|\(|\)|,|!)|(?P<word>[^\s!=(),]+))")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def valid_label_key(key: str) -> bool:
    """A qualified name: optional DNS-subdomain prefix (≤253) and a name (≤63)."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.match(name))


def valid_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.match(value))


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _LABEL_TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise bad_request(f"unable to parse requirement: {text!r}")
        tokens.append(m.group("op") or m.group("word"))
        pos = m.end()
    return tokens


@dataclass(frozen=True)
class LabelRequirement:
    """One ANDed term: op is "exists", "!", "=", "!=", "in" or "notin"."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # != and notin also match objects without the label, as upstream does.
        return not present or labels[self.key] not in self.values


def parse_label_selector(text: str) -> list[LabelRequirement]:
    """Parse a label selector into requirements that are ANDed together."""
    tokens = _tokenize(text)
    reqs: list[LabelRequirement] = []
    i = 0

    def fail(why: str) -> Exception:
        return bad_request(f"unable to parse requirement: {why} (selector {text!r})")

    def key_at(j: int) -> str:
        if j >= len(tokens) or tokens[j] in {"!=", "==", "=", "(", ")", ",", "!"}:
            raise fail("found end of input or an operator, expected: identifier")
        key = tokens[j]
        if not valid_label_key(key):
            raise fail(f"invalid label key {key!r}")
        return key

    def value_ok(value: str) -> str:
        if not valid_label_value(value):
            raise fail(f"invalid label value: {value!r}")
        return value

    while i < len(tokens):
        if tokens[i] == "!":
            key = key_at(i + 1)
            reqs.append(LabelRequirement(key, "!"))
            i += 2
        else:
            key = key_at(i)
            i += 1
            op = tokens[i] if i < len(tokens) else ","
            if op == ",":
                reqs.append(LabelRequirement(key, "exists"))
            elif op in {"=", "==", "!="}:
                if i + 1 >= len(tokens) or tokens[i + 1] in {",", "(", ")"}:
                    value = ""
                    i += 1
                else:
                    value = value_ok(tokens[i + 1])
                    i += 2
                reqs.append(LabelRequirement(key, "!=" if op == "!=" else "=", frozenset({value})))
            elif op in {"in", "notin"}:
                if i + 1 >= len(tokens) or tokens[i + 1] != "(":
                    raise fail("expected '(' after in/notin")
                i += 2
                values: set[str] = set()
                while i < len(tokens) and tokens[i] != ")":
                    if tokens[i] != ",":
                        values.add(value_ok(tokens[i]))
                    i += 1
                if i >= len(tokens):
                    raise fail("missing ')'")
                i += 1
                if not values:
                    raise fail("for 'in', 'notin' operators, values set can't be empty")
                reqs.append(LabelRequirement(key, op, frozenset(values)))
            else:
                raise fail(f"unexpected operator {op!r}")
        if i < len(tokens):
            if tokens[i] != ",":
                raise fail(f"expected ',' but found {tokens[i]!r}")
            i += 1
    return reqs


def label_matcher(reqs: list[LabelRequirement]) -> Callable[[JsonObject], bool]:
    def match(obj: JsonObject) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(req.matches(labels) for req in reqs)

    return match
