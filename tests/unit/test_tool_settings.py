"""Tool-calling settings: the bundled template, config checks, the json_object rewrite, one-call schemas."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from serving.config import ConfigError, load_config
from serving.engines.json_mode import BOUNDED_JSON_GRAMMAR, bounded_json_object
from serving.engines.tool_calls import one_call_only
from serving.modelprep.tiny import CHATML_TEMPLATE

TEMPLATE = (Path(__file__).parents[2] / "serving" / "templates" / "chatml_tools.jinja").read_text()
SMOLLM2_OWN = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "plan"},
    ],
]
TOOL = {
    "type": "function",
    "function": {
        "name": "plan_budget",
        "parameters": {"type": "object", "properties": {"b": {"type": "integer"}}},
    },
}


def render(template: str, messages: list[dict[str, Any]], **kw: Any) -> str:
    import jinja2

    env = jinja2.Environment()
    env.filters["tojson"] = lambda v: json.dumps(v)
    return env.from_string(template).render(messages=messages, **kw)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("gen", [True, False])
def test_without_tools_the_template_renders_the_models_own_chatml(
    messages: list[dict[str, Any]], gen: bool
) -> None:
    assert render(TEMPLATE, messages, add_generation_prompt=gen) == render(
        CHATML_TEMPLATE, messages, add_generation_prompt=gen
    )
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert render(TEMPLATE, messages, add_generation_prompt=gen, default_system=system) == render(
        SMOLLM2_OWN, messages, add_generation_prompt=gen
    )


def test_tools_calls_and_results_are_rendered_for_the_hermes_parser() -> None:
    messages = [
        {"role": "user", "content": "budget?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "plan_budget", "arguments": '{"b": 5}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"ok": true}'},
        {"role": "tool", "tool_call_id": "c2", "content": "done"},
    ]
    text = render(TEMPLATE, messages, tools=[TOOL], add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n# Tools\n") and json.dumps(TOOL) in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "plan_budget", "arguments": {"b": 5}}\n</tool_call><|im_end|>'
        in text
    )
    # consecutive tool results share one user turn
    assert text.count("<|im_start|>user") == 2 and text.count("<tool_response>") == 2
    assert text.endswith("<|im_start|>assistant\n")


def test_model_tool_settings_validate_and_travel_with_the_config(tmp_path: Path) -> None:
    cfg = load_config(
        _write(
            tmp_path,
            "model: {path: /m, chat_template: chatml-tools, tool_call_parser: hermes}\nadapters: {root: /r}\n",
        )
    )
    assert cfg.model.chat_template_text() == TEMPLATE
    # a template file is read when the config loads: the config pickled to another node carries it
    own = tmp_path / "t.jinja"
    own.write_text("{{ messages[0]['content'] }}")
    cfg = load_config(
        _write(tmp_path, f"model: {{path: /m, chat_template: {own}}}\nadapters: {{root: /r}}\n")
    )
    own.unlink()
    assert pickle.loads(pickle.dumps(cfg)).model.chat_template_text() == "{{ messages[0]['content'] }}"


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("{path: /m, chat_template: /nope.jinja}", "neither a bundled template"),
        ("{path: /m, chat_template: BAD}", "chat template"),
        ("{path: /m, tool_call_parser: 'a b'}", "model.tool_call_parser"),
    ],
)
def test_bad_tool_settings_name_the_field_and_file(tmp_path: Path, model: str, says: str) -> None:
    (tmp_path / "bad.jinja").write_text("{% for x in %}")
    path = _write(
        tmp_path, f"model: {model.replace('BAD', str(tmp_path / 'bad.jinja'))}\nadapters: {{root: /r}}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "model" in str(e.value) and says in str(e.value)


def test_unknown_parser_is_refused_before_the_engine_starts() -> None:
    from serving.engines.vllm_engine import check_tool_parser

    check_tool_parser("hermes")
    check_tool_parser(None)
    with pytest.raises(ValueError, match=r"model.tool_call_parser: 'hermes2' is not a vLLM tool-call parser"):
        check_tool_parser("hermes2")


def test_json_object_is_served_by_the_bounded_grammar() -> None:
    import xgrammar as xgr

    xgr.Grammar.from_ebnf(BOUNDED_JSON_GRAMMAR)  # compiles
    body = {"messages": [], "response_format": {"type": "json_object"}}
    out = bounded_json_object(body)
    assert "response_format" not in out and out["structured_outputs"] == {"grammar": BOUNDED_JSON_GRAMMAR}
    assert out["repetition_penalty"] == 1.1 and body["response_format"] == {"type": "json_object"}
    assert bounded_json_object({**body, "repetition_penalty": 1.0})["repetition_penalty"] == 1.0
    schema = {"messages": [], "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}
    assert bounded_json_object(schema) is schema


def test_bounded_grammar_accepts_objects_and_nothing_else() -> None:
    import xgrammar as xgr

    grammar = xgr.Grammar.from_ebnf(BOUNDED_JSON_GRAMMAR)
    info = xgr.TokenizerInfo([])
    compiled = xgr.GrammarCompiler(info).compile_grammar(grammar)

    def accepts(text: str) -> bool:
        m = xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        return m.accept_string(text) and m.is_terminated()

    assert accepts('{"name":"Bob","age":30,"tags":["a",1,true],"card":{"k":null,"v":[1.5]}}')
    assert accepts("{}")
    assert not accepts("[1,2]") and not accepts('"s"') and not accepts('{"a": 1}')  # no free whitespace
    assert not accepts('{"' + "k" * 40 + '":1}')  # keys at most 32 characters
    assert not accepts('{"s":"' + "x" * 161 + '"}')  # strings at most 160
    assert not accepts("{" + ",".join(f'"k{i}":1' for i in range(13)) + "}")  # at most 12 members
    assert not accepts('{"a":{"b":{"c":{"d":1}}}}')  # at most 3 deep


def test_one_call_only_when_parallel_calls_are_off() -> None:
    def request(parallel: bool, choice: Any = "required") -> Any:
        schema = {"type": "array", "minItems": 1, "items": {}}
        return SimpleNamespace(
            tool_choice=choice, parallel_tool_calls=parallel, structured_outputs=SimpleNamespace(json=schema)
        )

    assert one_call_only(request(False)).structured_outputs.json["maxItems"] == 1
    assert "maxItems" not in one_call_only(request(True)).structured_outputs.json
    assert "maxItems" not in one_call_only(request(False, choice="auto")).structured_outputs.json


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rmn.yaml"
    p.write_text(text)
    return p
