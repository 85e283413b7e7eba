"""The official `openai` Python client (PyPI, pinned in scripts/python-requirements.txt)
against a running `kiln serve` (tests/server/run_openai_client.sh BASE_URL):
completions and chat, streaming and not, usage, and an error surfacing as a 400
BadRequestError, logprobs with echo (completions) and in chat's shape, n > 1. Streamed text
must equal the non-streamed text at temperature 0."""
import sys

import openai


def main(base_url):
    client = openai.OpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=120)
    models = client.models.list()
    assert len(models.data) == 1, models
    model = models.data[0].id
    checks = 0

    prompt = "def read_config(path):\n    "
    c = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
    assert c.object == "text_completion", c
    assert len(c.choices[0].text) > 0, c
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, c.usage
    assert c.usage.completion_tokens > 0, c.usage
    checks += 1
    streamed = "".join(chunk.choices[0].text if chunk.choices else ""
                       for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=24,
                                                              temperature=0, stream=True))
    assert streamed == c.choices[0].text, (streamed, c.choices[0].text)
    checks += 1

    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Sort a list."}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
    assert r.object == "chat.completion", r
    assert r.choices[0].message.role == "assistant", r
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
    checks += 1
    chat, usage = "", None
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            chat += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert chat == (r.choices[0].message.content or ""), (chat, r.choices[0].message.content)
    checks += 1
    assert usage is not None and usage.model_dump() == r.usage.model_dump(), (usage, r.usage)
    checks += 1

    # logprobs + echo on completions (lm-evaluation-harness's loglikelihood shape), n > 1.
    e = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0, echo=True, logprobs=2)
    lp = e.choices[0].logprobs
    assert e.choices[0].text.startswith(prompt), e.choices[0].text
    n = e.usage.prompt_tokens + e.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n, lp
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
    for value, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert value <= 0.0 and 2 <= len(top) <= 3, (value, top)
        assert value <= max(top.values()) + 1e-12, (value, top)
    assert lp.text_offset == sorted(lp.text_offset), lp.text_offset
    checks += 1
    score = client.completions.create(model=model, prompt=prompt, max_tokens=0, temperature=0, echo=True, logprobs=1)
    assert score.choices[0].logprobs.token_logprobs == lp.token_logprobs[:e.usage.prompt_tokens], score
    checks += 1
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens, content
    for entry in content:
        assert len(entry.top_logprobs) == 3, entry
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True), values
        assert entry.logprob == values[0], entry  # greedy
    checks += 1
    many = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0, n=3)
    assert [c.index for c in many.choices] == [0, 1, 2], many
    assert len({c.text for c in many.choices}) == 1, many
    checks += 1

    try:
        client.chat.completions.create(model=model, messages=messages, temperature=7)
        raise AssertionError("temperature 7 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
        assert "temperature" in str(e), e
    checks += 1
    print(f"openai {openai.__version__} client: {checks} checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
