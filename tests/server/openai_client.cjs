// The official `openai` npm client against a running `kiln serve` (tests/server/run_openai_client.sh):
// completions and chat, streaming and not, usage, and an error surfacing as APIError.
// Streamed text must equal the non-streamed text at temperature 0.
const assert = require('node:assert/strict');
const { OpenAI } = require(process.env.KILN_OPENAI_MODULE);

async function main() {
  const client = new OpenAI({ baseURL: process.argv[2], apiKey: 'test-key', maxRetries: 0 });
  const models = await client.models.list();
  assert.equal(models.data.length, 1);
  const model = models.data[0].id;

  const prompt = 'def read_config(path):\n    ';
  const c = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0 });
  assert.equal(c.object, 'text_completion');
  assert.ok(c.choices[0].text.length > 0);
  assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + c.usage.completion_tokens);
  let streamed = '';
  const cs = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, stream: true });
  for await (const chunk of cs) streamed += chunk.choices[0]?.text ?? '';
  assert.equal(streamed, c.choices[0].text);

  const messages = [{ role: 'system', content: 'You write Python.' }, { role: 'user', content: 'Sort a list.' }];
  const r = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  let chat = '';
  let usage = null;
  const s = await client.chat.completions.create({
    model, messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of s) {
    chat += chunk.choices[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(chat, r.choices[0].message.content);
  assert.deepEqual(usage, r.usage);

  await assert.rejects(client.chat.completions.create({ model, messages, temperature: 7 }), (e) => {
    assert.equal(e.status, 400);
    assert.match(e.message, /temperature/);
    return true;
  });
  console.log('openai client: 6 checks passed');
}

main().catch((e) => { console.error(e); process.exit(1); });
