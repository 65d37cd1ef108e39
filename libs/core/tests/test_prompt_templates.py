"""Templates and typed variables (no server)."""

import json

import pytest
from helicone_core import prompt_templates as templates

TEMPLATE = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Summarise {{topic}} for {{ audience }}"}]})
TYPED = json.dumps({
    "model": "gpt-4o-mini", "temperature": "{{hc:temp:number}}", "stream": "{{hc:stream:boolean}}",
    "messages": [{"role": "system", "content": "Answer in {{hc:lang:string}}, at most {{hc:words:number}} words."},
                 {"role": "user", "content": "{{question}}"}],
})


def test_plain_variables_render_escaped_text():
    assert templates.variables(TEMPLATE) == ["topic", "audience"]
    out = json.loads(templates.render(TEMPLATE, {"topic": 'the "Q3" report\n', "audience": "execs", "unused": "x"}))
    assert out["messages"][0]["content"] == 'Summarise the "Q3" report\n for execs'
    with pytest.raises(templates.TemplateError, match="missing inputs: audience"):
        templates.render(TEMPLATE, {"topic": "x"})


def test_typed_variables_render_json_values_where_they_stand_alone():
    assert templates.typed_variables(TYPED) == {"temp": "number", "stream": "boolean", "lang": "string", "words": "number",
                                                "question": "string"}
    out = json.loads(templates.render(TYPED, {"temp": "0.2", "stream": False, "lang": "French", "words": 50, "question": "why?"}))
    assert out["temperature"] == 0.2 and out["stream"] is False
    assert out["messages"][0]["content"] == "Answer in French, at most 50 words."
    assert json.loads(templates.render(TYPED, {"temp": 1, "stream": "TRUE", "lang": "x", "words": "7", "question": 3}))["stream"] is True


@pytest.mark.parametrize("inputs, message", [
    ({"temp": "warm"}, r"input 'temp' must be a number .*hc:temp:number.*'warm'"),
    ({"temp": True}, r"input 'temp' must be a number"),
    ({"temp": "nan"}, r"input 'temp' must be a number"),
    ({"stream": "yes"}, r"input 'stream' must be true or false .*hc:stream:boolean"),
    ({"question": {"a": 1}}, r"input 'question' must be text"),
])
def test_mistyped_inputs_are_refused_naming_the_variable(inputs, message):
    good = {"temp": 0.5, "stream": True, "lang": "en", "words": 5, "question": "q"}
    with pytest.raises(templates.TemplateError, match=message):
        templates.render(TYPED, {**good, **inputs})


@pytest.mark.parametrize("template, message", [
    ("[1]", "JSON object"),
    ("{not json", "not valid JSON"),
    ('{"messages": {"role": "user"}}', "'messages' must be a list"),
    ('{"messages": [{"content": "hi"}]}', r"messages\[0\] must be an object with a 'role'"),
    ('{"messages": [{"role": "wizard", "content": "hi"}]}', r"messages\[0\].role 'wizard' is not one of"),
    ('{"tools": {}}', "'tools' must be a list"),
    ('{"response_format": "json"}', "'response_format' must be an object"),
    ('{"a": "{{hc:x:date}}"}', "variable 'x' has unknown type 'date'"),
    ('{"a": "{{x:number}}"}', r"variable 'x': a type needs the Helicone form \{\{hc:x:number\}\}"),
    ('{"a": "{{hc:x:number}} {{x}}"}', "variable 'x' is used as both number and string"),
])
def test_invalid_templates_name_the_problem(template, message):
    with pytest.raises(templates.TemplateError, match=message):
        templates.validate(template)


def test_changed_fields():
    assert templates.changed_fields(None, {"model": "a", "messages": []}) == ["messages", "model"]
    assert templates.changed_fields({"model": "a", "temperature": 1}, {"model": "b", "tools": []}) == ["model", "temperature", "tools"]
    assert templates.changed_fields({"model": "a"}, {"model": "a"}) == []


@pytest.mark.parametrize("depth", [500, 950])
def test_a_template_too_deep_to_render_is_refused_when_saved_and_when_rendered(depth):
    """Nested below the JSON parser's limit but past what rendering can walk: it was saved, and then
    every render raised RecursionError (a 500 in the gateway, UNKNOWN from the prompts service)."""
    deep = '{"model": "m", "messages": [], "x": ' + "[" * depth + "]" * depth + "}"
    with pytest.raises(templates.TemplateError, match="nests deeper than 100 levels"):
        templates.validate(deep)
    with pytest.raises(templates.TemplateError, match="nests deeper than 100 levels"):
        templates.render(deep, {})  # one stored before the check
    ok = '{"model": "m", "messages": [], "x": ' + "[" * 99 + "]" * 99 + "}"
    assert templates.validate(ok) and json.loads(templates.render(ok, {}))["model"] == "m"


def test_a_lone_surrogate_input_is_refused_naming_the_variable():
    """JSON lets a caller send "\\ud800"; rendered into the template it made text no UTF-8 encoder takes
    (a 500 in the gateway, UNKNOWN from the prompts service)."""
    inputs = json.loads('{"topic": "caf\\u00e9 \\ud800", "audience": "\\ud83d\\ude00"}')
    with pytest.raises(templates.TemplateError, match="input 'topic' contains a lone surrogate"):
        templates.render(TEMPLATE, inputs)
    out = templates.render(TEMPLATE, {**inputs, "topic": "café"})  # a surrogate pair is a character like any other
    assert json.loads(out)["messages"][0]["content"] == "Summarise café for 😀"


def test_inputs_that_would_render_past_max_bytes_are_refused():
    """One input used many times multiplies: 200 uses of a 10 kB input render 2 MB from a small template."""
    template = json.dumps({"messages": [{"role": "user", "content": "{{x}} " * 200}]})
    with pytest.raises(templates.RenderTooLarge, match="more than the limit of 1000000"):
        templates.render(template, {"x": "a" * 10_000}, max_bytes=1_000_000)
    assert len(templates.render(template, {"x": "a" * 1_000}, max_bytes=1_000_000)) > 200_000
    assert templates.render(template, {"x": "a" * 10_000})  # no limit given: as before
