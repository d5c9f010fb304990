"""Brand safety for ad lines: claim classes found by deterministic rules over the whole text, under a policy
per deployment, retailer and brand.

Contract: :func:`find_claims` normalises a text (Unicode NFKC, case-folded, typographic quotes and dashes
made plain, whitespace collapsed) and returns each claim class it finds with the words that matched, over
every line; :func:`check_text` turns that into a verdict under a :class:`GovernancePolicy`: ``rejected``
when a class the policy blocks, a banned term, a competitor's name or a length limit is hit, ``ok``
otherwise. Patterns match at word boundaries ("plan-based" is not "plant-based", "no. 1 fan" is not a
ranking claim). The classes follow the advertising codes' headings (CAP/ASA, FTC): health and medical
claims, absolute superlatives, comparative and competitor claims, price and guarantee claims, and
sensitive audiences (children, pregnancy). :func:`combine` merges a model's opinion with the rules'.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ClaimClass = Literal["health", "superlative", "comparative", "price_guarantee", "sensitive_audience"]
CLAIM_CLASSES: tuple[ClaimClass, ...] = (
    "health",
    "superlative",
    "comparative",
    "price_guarantee",
    "sensitive_audience",
)

_W = r"(?<![\w-])"  # a word starts here (a hyphen joins words: "best-before" is one)
_E = r"(?![\w-])"

PATTERNS: dict[ClaimClass, list[str]] = {
    "health": [
        r"cures?",
        r"curing",
        r"heal(?:s|ing)?",
        r"treat(?:s|ment)? (?:for |of )?(?:\w+ )?(?:disease|illness|cancer|diabetes|arthritis|depression|"
        r"anxiety|insomnia|infection)s?",
        r"prevents? (?:\w+ )?(?:disease|illness|cancer|diabetes|infection|colds?|flu|covid)s?",
        r"clinically (?:proven|tested|shown)",
        r"(?:doctor|dentist|physician)s?[' ]?(?:s )?recommended",
        r"immun(?:e system|ity)",
        r"boosts? (?:your )?(?:immun\w*|metabolism|health)",
        r"detox\w*",
        r"(?:lose|drop|shed) \d+ ?(?:lbs?|pounds?|kg|kilos?)",
        r"weight loss",
        r"burns? fat",
        r"fat[ -]burning",
        r"(?:fda|medically) approved",
        r"cancer",
        r"diabetes",
        r"anti[- ]?aging",
        r"medical(?:ly)?",
        r"miracle",
        r"lowers? (?:your )?(?:blood pressure|cholesterol)",
    ],
    "superlative": [
        r"no\.? ?1(?! fan)",
        r"#1",
        r"number one(?! fan)",
        r"the best",
        r"best[- ]ever",
        r"(?:world|america|americ\w+|nation|country)'?s best",
        r"best in (?:the )?(?:world|america|town|country|the nation)",
        r"unbeatable",
        r"unmatched",
        r"unrivall?ed",
        r"the only \w+",
        r"greatest",
        r"best[- ]selling",
        r"top[- ]rated",
        r"perfect",
    ],
    "comparative": [
        r"better than",
        r"(?:tastier|stronger|fresher|cheaper|smoother|richer) than",
        r"beats? (?:the competition|\w+'s|[A-Z]\w+)",
        r"outperforms?",
        r"vs\.?",
        r"versus",
        r"compared (?:to|with)",
        r"unlike (?:other|the other|their|those)",
        r"other brands?",
        r"the competition",
        r"competitors?",
    ],
    "price_guarantee": [
        r"guarantee[ds]?",
        r"money[- ]back",
        r"risk[- ]free",
        r"no risk",
        r"100 ?%",
        r"lowest prices?",
        r"cheapest",
        r"half (?:the )?price",
        r"free(?! (?:range|trade))",
        r"\d+ ?% off",
        r"save \d+ ?%",
        r"free trial",
        r"(?:buy one|bogo)",
        r"price match",
    ],
    "sensitive_audience": [
        r"kids?",
        r"child(?:ren)?",
        r"toddlers?",
        r"bab(?:y|ies)",
        r"infants?",
        r"pregnan(?:t|cy)",
        r"expecting mothers?",
        r"nursing mothers?",
        r"breastfeeding",
        r"teens?",
        r"teenagers?",
        r"minors?",
        r"schoolchildren",
    ],
}
# an audience word joined by a hyphen still names the audience ("kid-sized", "pregnancy-safe"); elsewhere a
# hyphen makes another word ("best-before", "gluten-free")
_END = {c: (r"(?!\w)" if c == "sensitive_audience" else _E) for c in PATTERNS}
_COMPILED = {c: re.compile("|".join(f"{_W}(?:{p}){_END[c]}" for p in ps)) for c, ps in PATTERNS.items()}
# these two are matched on the original case: "beats Folgers" (a name) but not "beats the heat"
_CASED = re.compile(r"(?<![\w-])beats? (?:[A-Z]\w+)(?![\w-])")


class GovernancePolicy(BaseModel):
    """What an ad line may not say. Retailer and brand policies add to the deployment's (stricter wins)."""

    model_config = ConfigDict(extra="forbid")

    blocked_claims: list[ClaimClass] = Field(
        default_factory=list,
        description="Claim classes a line may not make (without legal review): health, superlative, "
        "comparative, price_guarantee, sensitive_audience. A retailer's or brand's list adds to the "
        "deployment's.",
    )
    banned_words: list[str] = Field(
        default_factory=list, description="Words or phrases a line may not contain (case-insensitive)."
    )
    competitors: list[str] = Field(
        default_factory=list, description="Competitors' names: a line naming one is a comparative claim."
    )
    max_chars: int | None = Field(default=None, gt=0, description="Longest allowed line (null: no limit).")
    min_chars: int | None = Field(default=None, ge=0, description="Shortest allowed line (null: no limit).")

    def merged(self, *more: GovernancePolicy | None) -> GovernancePolicy:
        """This policy with ``more`` added: the union of what is blocked, the tightest lengths."""
        out = self.model_copy(deep=True)
        for p in more:
            if p is None:
                continue
            out.blocked_claims = sorted(set(out.blocked_claims) | set(p.blocked_claims))
            out.banned_words = sorted(set(out.banned_words) | set(p.banned_words))
            out.competitors = sorted(set(out.competitors) | set(p.competitors))
            out.max_chars = min(x for x in (out.max_chars, p.max_chars, 10**9) if x is not None)
            out.min_chars = max(x for x in (out.min_chars, p.min_chars, 0) if x is not None)
        if out.max_chars == 10**9:
            out.max_chars = None
        return out


_PLAIN = str.maketrans("‘’“”–—‑‐‒", "''\"\"-----")  # after NFKC: U+2011 has become U+2010


def normalise(text: str) -> str:
    """NFKC, case-folded, plain quotes and dashes, one space between words (lines joined)."""
    t = unicodedata.normalize("NFKC", text)
    t = t.translate(_PLAIN)
    t = "".join(ch for ch in t if unicodedata.category(ch) != "Cf")  # zero-width joiners, soft hyphens
    t = re.sub(r"\s+", " ", t).strip().casefold()
    # letters spelled apart ("k i d s") read as the word
    return re.sub(r"(?<!\w)(?:\w ){2,}\w(?!\w)", lambda m: m.group(0).replace(" ", ""), t)


def _term(term: str) -> re.Pattern[str]:
    return re.compile(_W + re.escape(normalise(term)) + _E)


def find_claims(text: str, competitors: list[str] | None = None) -> dict[ClaimClass, list[str]]:
    """Claim class -> the words that made it, over the whole text (every line)."""
    low = normalise(text)
    found: dict[ClaimClass, list[str]] = {}
    for cls, rx in _COMPILED.items():
        hits = [m.group(0) for m in rx.finditer(low)]
        if cls == "comparative":
            hits = [h for h in hits if not h.startswith("beat")]  # named beats only: cased below
            flat = unicodedata.normalize("NFKC", text)
            hits += [m.group(0).casefold() for m in _CASED.finditer(flat) if not m.group(0).endswith(" The")]
            hits += [c.casefold() for c in competitors or [] if _term(c).search(low)]
        if hits:
            found[cls] = sorted(set(hits))
    return found


_LABEL = re.compile(r"^\s*(?:head(?:line)?|ad(?: line)?|tagline|line|copy|caption)\s*:", re.IGNORECASE)
_ODD_CASE = re.compile(r"(?<![\w-])[A-Za-z]*[a-z][A-Z]+(?![\w-])")  # "SmolHeadL": capitals closing a word


def format_problems(text: str) -> list[str]:
    """What makes a line unfit to show as written (a generation artefact, not a claim): a label left in front
    ("Head: …"), a word repeated at once ("Fresh Fresh"), capitals closing a word ("SmolHeadL")."""
    out = []
    label = _LABEL.match(text)
    if label:
        out.append(f"starts with a label {label.group(0).strip()!r}")
    words = re.findall(r"[^\W\d_]+", normalise(text))
    repeated = next((a for a, b in itertools.pairwise(words) if a == b), None)
    if repeated:
        out.append(f"repeated word {repeated!r}")
    odd = _ODD_CASE.search(unicodedata.normalize("NFKC", text))
    if odd:
        out.append(f"unusual capitalisation {odd.group(0)!r}")
    return out


def check_text(text: str, policy: GovernancePolicy) -> dict[str, Any]:
    """The rules' verdict on a whole ad text: ``decision`` — ``rejected`` (a blocked claim class, a banned
    word, a length), ``pending`` (only format problems: a person decides) or ``ok`` — with ``ok`` (decision
    is ok), the claim classes found and each violation with its reason."""
    body = text.strip()
    claims = find_claims(body, policy.competitors)
    violations = [
        f"{cls.replace('_', ' ')} claim: {', '.join(repr(w) for w in words)}"
        for cls, words in claims.items()
        if cls in policy.blocked_claims
    ]
    low = normalise(body)
    violations += [f"banned word or claim: {w!r}" for w in policy.banned_words if _term(w).search(low)]
    n = len(body)
    if policy.max_chars is not None and n > policy.max_chars:
        violations.append(f"longer than {policy.max_chars} characters ({n})")
    if policy.min_chars is not None and n < policy.min_chars:
        violations.append(f"shorter than {policy.min_chars} characters ({n})")
    problems = format_problems(body)
    decision = "rejected" if violations else ("pending" if problems else "ok")
    return {
        "text": body,
        "decision": decision,
        "ok": decision == "ok",
        "claims": {c: w for c, w in claims.items()},
        "violations": violations + problems,
    }


def combine(
    rules: dict[str, Any], model_claims: list[str] | None, policy: GovernancePolicy
) -> dict[str, Any]:
    """The documented rule: rules rejecting -> ``rejected``; otherwise a blocked class the model alone finds
    -> ``pending`` (a person decides); otherwise ``ok``. ``model_claims`` None: the model was not asked."""
    out = dict(rules)
    flagged = sorted(set(model_claims or []) & set(policy.blocked_claims) - set(rules["claims"]))
    out["model_claims"] = model_claims
    if rules["decision"] == "ok" and flagged:
        out["decision"], out["ok"] = "pending", False
        out["violations"] = [
            *rules["violations"],
            *(f"model flags a {c.replace('_', ' ')} claim" for c in flagged),
        ]
    return out


MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "claims": {"type": "array", "items": {"type": "string", "enum": list(CLAIM_CLASSES)}, "maxItems": 5}
    },
    "required": ["claims"],
    "additionalProperties": False,
}
_DEFINITIONS = (
    "health: health, medical, diet or body claims; superlative: best, number one, only, perfect; comparative: "
    "better than, beats or names another brand; price_guarantee: guarantees, refunds, risk free, discounts, "
    "lowest price; sensitive_audience: children, babies, teens, pregnancy."
)


def model_messages(text: str) -> list[dict[str, str]]:
    """Chat messages asking a model which claim classes an ad text makes (answer: :data:`MODEL_SCHEMA`)."""
    return [
        {
            "role": "system",
            "content": "You review ad copy for a brand-safety team. Claim classes: "
            + _DEFINITIONS
            + ' Answer with JSON {"claims": [...]} listing the classes the ad makes; [] when none.',
        },
        {"role": "user", "content": f"Ad: {text.strip()[:1000]}"},
    ]


def model_request(served_name: str, text: str) -> dict[str, Any]:
    """The chat request asking ``served_name`` (no adapter) for ``text``'s claim classes, greedy, guided JSON."""
    return {
        "model": served_name,
        "messages": model_messages(text),
        "max_tokens": 40,
        "temperature": 0,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "claims", "schema": MODEL_SCHEMA, "strict": True},
        },
    }


def parse_model_claims(answer: str) -> list[str] | None:
    """The classes a model's answer names (in :data:`CLAIM_CLASSES`), or None when it is not the JSON asked."""
    import json

    try:
        obj = json.loads(answer)
    except (json.JSONDecodeError, TypeError):
        return None
    claims = obj.get("claims") if isinstance(obj, dict) else None
    if not isinstance(claims, list):
        return None
    return sorted({c for c in claims if c in CLAIM_CLASSES})
