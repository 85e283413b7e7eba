"""Structured output through the real server (tests/server/run_python_client.sh BASE_URL):
for 20 schemas of the supported subset, every sampled output (temperature 1, 20 seeds
each as n = 20 choices, on the bundled model) parses and validates against its schema
with Python's jsonschema (an independent validator); json_object gives JSON objects;
schemas outside the subset get a 400 naming the keyword. Both endpoints."""
import json
import sys
import urllib.error
import urllib.request

import jsonschema

STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}


def obj(props, required=None):
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False}


SCHEMAS = [
    obj({"name": STR}),
    obj({"age": INT}),
    obj({"ok": BOOL, "n": NUM}),
    obj({"color": {"enum": ["red", "green", "blue"]}}),
    obj({"kind": {"const": "point"}, "x": NUM, "y": NUM}),
    {"type": "array", "items": INT, "maxItems": 5},
    {"type": "array", "items": STR, "minItems": 1, "maxItems": 3},
    obj({"tags": {"type": "array", "items": STR, "maxItems": 4}}),
    obj({"user": obj({"id": INT, "name": STR})}),
    obj({"a": obj({"b": obj({"c": {"type": ["string", "null"]}})})}),
    obj({"value": {"anyOf": [INT, STR, {"type": "null"}]}}),
    obj({"items": {"type": "array", "items": obj({"sku": STR, "qty": INT}), "maxItems": 3}}),
    obj({"status": {"enum": ["ok", "error", 404, None, True]}}),
    obj({"quote": STR, "author": STR}, required=["quote"]),
    {"anyOf": [obj({"cat": STR}), obj({"dog": INT})]},
    obj({"matrix": {"type": "array", "items": {"type": "array", "items": NUM, "maxItems": 3}, "maxItems": 3}}),
    obj({"flag": BOOL, "count": INT, "ratio": NUM, "label": STR}),
    {"type": "string"},
    {"enum": ["yes", "no"]},
    obj({"path": STR, "escaped": {"type": "string"}, "nothing": {"type": "null"}}),
]


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def texts(base, chat, response_format, n, seed):
    if chat:
        body = {"messages": [{"role": "user", "content": "Reply with JSON."}]}
        path = "/chat/completions"
    else:
        body = {"prompt": "{\"data\": "}
        path = "/completions"
    body.update({"max_tokens": 1500, "temperature": 1, "n": n, "seed": seed, "response_format": response_format})
    status, j = post(base, path, body)
    assert status == 200, (status, j)
    out = []
    for c in j["choices"]:
        assert c["finish_reason"] == "stop", ("the document did not close", c)
        out.append(c["message"]["content"] if chat else c["text"])
    return out


def main(base):
    checked = 0
    for i, schema in enumerate(SCHEMAS):
        jsonschema.Draft202012Validator.check_schema(schema)
        rf = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
        for text in texts(base, chat=i % 2 == 1, response_format=rf, n=20, seed=1000 + i):
            doc = json.loads(text)
            jsonschema.validate(doc, schema)
            checked += 1
    for text in texts(base, chat=False, response_format={"type": "json_object"}, n=10, seed=7):
        assert isinstance(json.loads(text), dict), text
        checked += 1
    refused = 0
    for schema, keyword in [({"type": "string", "pattern": "a+"}, "pattern"), ({"$ref": "#/x"}, "$ref"),
                            ({"type": "string", "format": "date"}, "format"),
                            ({"type": "object", "additionalProperties": STR}, "additionalProperties")]:
        status, j = post(base, "/completions", {"prompt": "x", "max_tokens": 4, "response_format": {
            "type": "json_schema", "json_schema": {"name": "bad", "schema": schema}}})
        assert status == 400, (status, j)
        assert j["error"]["param"] == "response_format" and keyword in j["error"]["message"], j
        refused += 1
    print(f"structured output: {checked} sampled documents valid (jsonschema {jsonschema.__version__}), {refused} schemas refused")


if __name__ == "__main__":
    main(sys.argv[1])
