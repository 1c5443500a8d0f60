"""Who may use what: roles grant servers, tools, prompts and resources by glob pattern.

Evaluation for one (server, kind, name): the catalog entry's tool allowlist bounds tools for
everyone; then a matching `deny` rule of the role refuses, else a matching `allow` rule admits,
else the answer is no (closed by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from fnmatch import fnmatchcase
from typing import Any

from stockade.errors import ValidationFailed


class Kind(str, Enum):
    tool = "tool"
    prompt = "prompt"
    resource = "resource"


class Effect(str, Enum):
    allow = "allow"
    deny = "deny"


@dataclass(frozen=True)
class Rule:
    effect: Effect
    server: str = "*"
    kind: str = "*"  # a Kind value or "*"
    name: str = "*"

    def matches(self, server: str, kind: Kind, name: str) -> bool:
        return (
            fnmatchcase(server, self.server)
            and (self.kind == "*" or self.kind == kind.value)
            and fnmatchcase(name, self.name)
        )

    def as_dict(self) -> dict[str, str]:
        return {"effect": self.effect.value, "server": self.server, "kind": self.kind, "name": self.name}


def parse_rules(raw: Any) -> list[Rule]:
    """Rules from JSON, with errors that say which rule and field is wrong."""
    if not isinstance(raw, list):
        raise ValidationFailed("rules must be a list of {effect, server, kind, name} objects")
    rules = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ValidationFailed(f"rules[{index}] must be an object")
        unknown = set(item) - {"effect", "server", "kind", "name"}
        if unknown:
            raise ValidationFailed(f"rules[{index}] has unknown fields: {', '.join(sorted(unknown))}")
        try:
            effect = Effect(item.get("effect"))
        except ValueError:
            raise ValidationFailed(f"rules[{index}].effect must be 'allow' or 'deny'") from None
        kind = item.get("kind", "*")
        if kind != "*" and kind not in {k.value for k in Kind}:
            raise ValidationFailed(f"rules[{index}].kind must be one of tool, prompt, resource or '*'")
        fields = {key: item.get(key, "*") for key in ("server", "name")}
        for key, value in fields.items():
            if not isinstance(value, str) or not value:
                raise ValidationFailed(f"rules[{index}].{key} must be a non-empty glob pattern")
        rules.append(Rule(effect=effect, kind=kind, **fields))
    return rules


def is_allowed(
    rules: Sequence[Rule], server: str, kind: Kind, name: str, *, tool_allowlist: Sequence[str] = ("*",)
) -> bool:
    if kind is Kind.tool and not any(fnmatchcase(name, pattern) for pattern in tool_allowlist):
        return False
    matching = [rule for rule in rules if rule.matches(server, kind, name)]
    if any(rule.effect is Effect.deny for rule in matching):
        return False
    return any(rule.effect is Effect.allow for rule in matching)

