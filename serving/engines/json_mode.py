"""``response_format: {"type": "json_object"}`` that ends in valid JSON on small models.

vLLM's json_object grammar admits any JSON: a small model (SmolLM2-135M) falls into a repetition inside a
string, key or array and runs to ``max_tokens`` without closing the object (2 of 5 prompts valid in
``bench/results/json_mode.json``). :func:`bounded_json_object` serves such a request with a compact JSON
grammar whose every construct is bounded (keys: identifiers of at most 32 characters; strings at most 160
characters; at most 12 members or items; objects nested at most 3 deep; no free whitespace) and, unless the
request sets one, ``repetition_penalty`` 1.1. Any JSON this grammar admits is a JSON object, so the OpenAI
contract (a valid JSON object) is unchanged; larger or deeper objects need ``json_schema``.
"""

from __future__ import annotations

from typing import Any

BOUNDED_JSON_GRAMMAR = r"""
root ::= obj3
obj3 ::= "{" ( member3 ( "," member3 ){0,11} )? "}"
member3 ::= key ":" val3
val3 ::= scalar | arr2 | obj2
obj2 ::= "{" ( member2 ( "," member2 ){0,11} )? "}"
member2 ::= key ":" val2
val2 ::= scalar | arr1 | obj1
arr2 ::= "[" ( val2 ( "," val2 ){0,11} )? "]"
obj1 ::= "{" ( member1 ( "," member1 ){0,11} )? "}"
member1 ::= key ":" scalar
arr1 ::= "[" ( scalar ( "," scalar ){0,11} )? "]"
scalar ::= string | number | "true" | "false" | "null"
key ::= "\"" [A-Za-z_] [A-Za-z0-9_]{0,31} "\""
string ::= "\"" char{0,160} "\""
char ::= [^"\\\x00-\x1f] | "\\" ["\\/bfnrt]
number ::= "-"? ( "0" | [1-9] [0-9]{0,14} ) ( "." [0-9]{1,8} )?
"""
REPETITION_PENALTY = 1.1


def bounded_json_object(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with a json_object ``response_format`` replaced by the bounded grammar (a new dict);
    any other body is returned as it is."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_object" or body.get("structured_outputs"):
        return body
    out = {k: v for k, v in body.items() if k != "response_format"}
    out["structured_outputs"] = {"grammar": BOUNDED_JSON_GRAMMAR}
    out.setdefault("repetition_penalty", REPETITION_PENALTY)
    return out
