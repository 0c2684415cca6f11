// http.test.mjs: the gateway's HTTP API through the official openai client and plain fetch,
// against a real gptoss-gateway + gptoss-shardd on a tiny random-weights model (started by
// run_http.sh, which sets GPTOSS_URL, GPTOSS_KEY, GPTOSS_MODEL). The text is gibberish, so the
// tests assert structure, token counts and determinism, never content.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import net from 'node:net';

const URL = process.env.GPTOSS_URL;
const KEY = process.env.GPTOSS_KEY;
const MODEL = process.env.GPTOSS_MODEL || 'tiny-test';
const client = new OpenAI({ baseURL: `${URL}/v1`, apiKey: KEY, maxRetries: 0, timeout: 60000 });
const auth = { Authorization: `Bearer ${KEY}`, 'Content-Type': 'application/json' };
const msgs = [{ role: 'user', content: 'Say hello.' }];

async function post(path, body, headers = auth) {
  const r = await fetch(`${URL}${path}`, {
    method: 'POST',
    headers,
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.status, headers: r.headers, text, json };
}

function assertOpenAIError(res, status, param) {
  assert.equal(res.status, status, res.text);
  assert.ok(res.json && res.json.error, `error body: ${res.text}`);
  const e = res.json.error;
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, 'string');
  assert.ok('param' in e && 'code' in e);
  if (param !== undefined) assert.equal(e.param, param);
}

async function stats() {
  const r = await fetch(`${URL}/stats`);
  assert.equal(r.status, 200);
  return r.json();
}

async function healthy() {
  const r = await fetch(`${URL}/health`);
  assert.equal(r.status, 200);
}

test('models list', async () => {
  const list = await client.models.list();
  assert.equal(list.data.length, 1);
  assert.equal(list.data[0].id, MODEL);
  assert.equal(list.data[0].object, 'model');
  assert.equal(typeof list.data[0].created, 'number');
  assert.equal(typeof list.data[0].owned_by, 'string');
  const m = await client.models.retrieve(MODEL);
  assert.equal(m.id, MODEL);
});

test('chat non-streaming: shape, usage, timings', async () => {
  const r = await client.chat.completions.create({
    model: MODEL, messages: msgs, max_tokens: 8, seed: 42, temperature: 0.8,
  });
  assert.match(r.id, /^chatcmpl-[0-9a-f]+$/);
  assert.equal(r.object, 'chat.completion');
  assert.equal(typeof r.created, 'number');
  assert.equal(r.model, MODEL);
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.index, 0);
  assert.equal(c.message.role, 'assistant');
  assert.ok(['stop', 'length', 'tool_calls'].includes(c.finish_reason));
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 8);
  if (c.finish_reason === 'length') assert.equal(r.usage.completion_tokens, 8);
  assert.ok(r.usage.prompt_tokens > 10);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.equal(typeof r.usage.completion_tokens_details.reasoning_tokens, 'number');
  assert.equal(typeof r.timings.prompt_ms, 'number');
  assert.equal(typeof r.timings.predicted_per_second, 'number');
});

test('chat: same seed gives the same text; n=2 and logprobs', async () => {
  const req = { model: MODEL, messages: msgs, max_tokens: 12, seed: 7, temperature: 1.0 };
  const a = await client.chat.completions.create(req);
  const b = await client.chat.completions.create(req);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  assert.equal(a.choices[0].message.reasoning_content, b.choices[0].message.reasoning_content);
  assert.equal(a.usage.completion_tokens, b.usage.completion_tokens);

  const n = await client.chat.completions.create({
    ...req, n: 2, logprobs: true, top_logprobs: 3,
  });
  assert.equal(n.choices.length, 2);
  let total = 0;
  for (const c of n.choices) {
    assert.ok(Array.isArray(c.logprobs.content));
    const k = c.logprobs.content.length;
    assert.ok(k >= 1 && k <= 12);
    total += k;
    for (const e of c.logprobs.content) {
      assert.equal(typeof e.token, 'string');
      assert.ok(e.logprob <= 0);
      assert.ok(Array.isArray(e.bytes));
      assert.ok(e.top_logprobs.length <= 3);
    }
  }
  assert.equal(n.usage.completion_tokens, total);
});

test('chat streaming: chunks, usage chunk, same text as non-streaming', async () => {
  const req = { model: MODEL, messages: msgs, max_tokens: 10, seed: 11, temperature: 0.9 };
  const whole = await client.chat.completions.create(req);
  const stream = await client.chat.completions.create({
    ...req, stream: true, stream_options: { include_usage: true },
  });
  let content = '', reasoning = '', finishes = 0, first = true, usage = null, id = null;
  for await (const ch of stream) {
    assert.equal(ch.object, 'chat.completion.chunk');
    id = id || ch.id;
    assert.equal(ch.id, id);
    assert.equal(ch.model, MODEL);
    if (ch.usage) {
      assert.deepEqual(ch.choices, []);
      usage = ch.usage;
      continue;
    }
    const c = ch.choices[0];
    if (first) {
      assert.equal(c.delta.role, 'assistant');
      first = false;
    }
    if (c.delta.content) content += c.delta.content;
    if (c.delta.reasoning_content) reasoning += c.delta.reasoning_content;
    if (c.finish_reason) {
      finishes++;
      assert.deepEqual(c.delta, {});
    }
  }
  assert.equal(finishes, 1);
  assert.ok(usage, 'usage chunk');
  assert.ok(usage.completion_tokens >= 1 && usage.completion_tokens <= 10);
  assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
  assert.equal(content, whole.choices[0].message.content ?? '');
  assert.equal(reasoning, whole.choices[0].message.reasoning_content ?? '');
});

test('chat streaming: raw SSE framing ends with [DONE]', async () => {
  const r = await post('/v1/chat/completions', {
    model: MODEL, messages: msgs, max_tokens: 4, stream: true, seed: 1,
  });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /text\/event-stream/);
  const events = r.text.split('\n\n');
  assert.equal(events.pop(), '');
  assert.equal(events.pop(), 'data: [DONE]');
  for (const ev of events) {
    assert.ok(ev.startsWith('data: '), ev);
    JSON.parse(ev.slice(6));
  }
});

test('completions: text and token-id prompts', async () => {
  const r = await client.completions.create({ model: MODEL, prompt: 'Hello', max_tokens: 5, seed: 3 });
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.object, 'text_completion');
  assert.equal(typeof r.choices[0].text, 'string');
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 5);
  assert.equal(r.usage.prompt_tokens, 1);
  const ids = await client.completions.create({ model: MODEL, prompt: [13225, 2375], max_tokens: 3 });
  assert.equal(ids.usage.prompt_tokens, 2);
  const s = await client.completions.create({
    model: MODEL, prompt: 'Hello', max_tokens: 5, seed: 3, stream: true,
  });
  let text = '';
  for await (const ch of s) text += ch.choices[0]?.text ?? '';
  assert.equal(text, r.choices[0].text);
});

test('tokenize / detokenize round trip', async () => {
  const t = await post('/tokenize', { content: 'Hello, world! <|start|>', special: true });
  assert.equal(t.status, 200);
  assert.ok(t.json.tokens.length >= 4);
  assert.equal(t.json.tokens.at(-1), 200006);
  const d = await post('/detokenize', { tokens: t.json.tokens });
  assert.equal(d.status, 200);
  assert.equal(d.json.content, 'Hello, world! <|start|>');
  const plain = await post('/tokenize', { text: '<|start|>' });
  assert.ok(!plain.json.tokens.includes(200006));
  assertOpenAIError(await post('/detokenize', { tokens: [-1] }), 400, 'tokens');
});

test('API key: 401 without or with a wrong key, open health endpoints', async () => {
  const bad = new OpenAI({ baseURL: `${URL}/v1`, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(bad.models.list(), (e) => e.status === 401);
  const r = await post('/v1/chat/completions', { model: MODEL, messages: msgs },
    { 'Content-Type': 'application/json' });
  assertOpenAIError(r, 401);
  assert.equal(r.json.error.type, 'authentication_error');
  assertOpenAIError(await post('/tokenize', { content: 'x' }, {}), 401);
  for (const p of ['/health', '/ready', '/metrics', '/stats']) {
    const h = await fetch(`${URL}${p}`);
    assert.equal(h.status, 200, p);
  }
});

test('malformed requests give OpenAI-shaped 4xx and the server stays up', async () => {
  assertOpenAIError(await post('/v1/chat/completions', '{not json'), 400);
  assertOpenAIError(await post('/v1/chat/completions', ''), 400);
  assertOpenAIError(await post('/v1/chat/completions', '[1,2]'), 400);
  assertOpenAIError(await post('/v1/chat/completions', { messages: [] }), 400, 'messages');
  assertOpenAIError(await post('/v1/chat/completions', { messages: 'hi' }), 400, 'messages');
  assertOpenAIError(await post('/v1/chat/completions',
    { messages: [{ role: 'wizard', content: 'x' }] }), 400, 'messages[0].role');
  assertOpenAIError(await post('/v1/chat/completions',
    { messages: msgs, temperature: 'hot' }), 400, 'temperature');
  assertOpenAIError(await post('/v1/chat/completions',
    { messages: msgs, top_p: 5 }), 400, 'top_p');
  assertOpenAIError(await post('/v1/chat/completions',
    { messages: msgs, max_tokens: -3 }), 400, 'max_tokens');
  assertOpenAIError(await post('/v1/chat/completions',
    { messages: msgs, n: 1000 }), 400, 'n');
  assertOpenAIError(await post('/v1/chat/completions',
    { messages: msgs, stop: [1] }), 400, 'stop');
  assertOpenAIError(await post('/v1/completions', { prompt: [1e12] }), 400, 'prompt');
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: msgs, temperature: -1 }),
    (e) => e.status === 400);
  const huge = '{"messages":[{"role":"user","content":"' + 'a'.repeat(5 << 20) + '"}]}';
  assertOpenAIError(await post('/v1/chat/completions', huge), 413);
  const nf = await fetch(`${URL}/nope`);
  assert.equal(nf.status, 404);
  assertOpenAIError({ status: nf.status, text: '', json: await nf.json() }, 404);
  const wm = await fetch(`${URL}/v1/chat/completions`, { headers: auth });
  assert.equal(wm.status, 405);
  assert.equal(wm.headers.get('allow'), 'POST');
  assertOpenAIError(await post('/v1/cancel/chatcmpl-doesnotexist', {}), 404);
  await healthy();
  // and it still generates
  const r = await client.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 2 });
  assert.ok(r.usage.completion_tokens <= 2);
});

test('client disconnect mid-stream cancels the request', async () => {
  const ac = new AbortController();
  const r = await fetch(`${URL}/v1/chat/completions`, {
    method: 'POST', headers: auth, signal: ac.signal,
    body: JSON.stringify({ model: MODEL, messages: msgs, max_tokens: 100000, stream: true }),
  });
  assert.equal(r.status, 200);
  const reader = r.body.getReader();
  let got = '';
  while (!got.includes('"content":"') || got.split('data: ').length < 4) {
    const { value, done } = await reader.read();
    assert.ok(!done, 'stream ended early');
    got += new TextDecoder().decode(value);
  }
  const before = await stats();
  assert.ok(before.requests.running + before.requests.waiting >= 1);
  ac.abort();
  let s;
  for (let i = 0; i < 50; i++) {
    await new Promise((res) => setTimeout(res, 100));
    s = await stats();
    if (s.requests.running === 0 && s.requests.waiting === 0) break;
  }
  assert.equal(s.requests.running, 0);
  assert.equal(s.requests.waiting, 0);
  assert.ok(s.tokens.generated < 100000);
});

test('cancel by id: /v1/cancel ends a running request', async () => {
  const stream = await client.chat.completions.create({
    model: MODEL, messages: msgs, max_tokens: 100000, stream: true,
  });
  let id = null, finish = null, n = 0;
  for await (const ch of stream) {
    if (!id) {
      id = ch.id;
      const c = await post(`/v1/cancel/${id}`, {});
      assert.equal(c.status, 200);
      assert.equal(c.json.cancelled, true);
    }
    n++;
    if (ch.choices[0]?.finish_reason) finish = ch.choices[0].finish_reason;
  }
  assert.equal(finish, 'abort');
  assert.ok(n < 100000);
});

test('health, ready, stats, metrics contents', async () => {
  const h = await (await fetch(`${URL}/health`)).json();
  assert.equal(h.status, 'ready');
  const rd = await fetch(`${URL}/ready`);
  assert.equal(rd.status, 200);
  const s = await stats();
  assert.equal(s.status, 'ready');
  assert.equal(typeof s.uptime_s, 'number');
  assert.ok(s.requests.total >= 5);
  assert.ok(s.tokens.generated > 0);
  assert.ok(s.kv_blocks.total > 0);
  assert.equal(s.kv_blocks.used + s.kv_blocks.free, s.kv_blocks.total);
  assert.equal(s.shards.length, 1);
  assert.equal(s.shards[0].up, true);
  const m = await (await fetch(`${URL}/metrics`)).text();
  assert.match(m, /# TYPE gptoss:http_requests_total counter/);
  assert.match(m, /gptoss:http_requests_total\{endpoint="\/v1\/chat\/completions",status="200"\} \d+/);
  assert.match(m, /# TYPE gptoss:time_to_first_token_seconds histogram/);
  assert.match(m, /gptoss:e2e_request_latency_seconds_count [1-9]/);
  assert.match(m, /gptoss:num_requests_running 0/);
  assert.match(m, /gptoss:shard_up\{shard="0"\} 1/);
  assert.match(m, /gptoss:generation_tokens_total [1-9]/);
});

test('tool_choice: a named function or "required" forces a tool call', async () => {
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather',
    parameters: { type: 'object', properties: { city: { type: 'string' } } } } },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } }];
  const named = await client.chat.completions.create({
    model: MODEL, messages: msgs, tools, max_tokens: 8, seed: 5,
    tool_choice: { type: 'function', function: { name: 'get_time' } } });
  const m = named.choices[0].message;
  assert.equal(m.content, null);
  assert.equal(m.tool_calls.length, 1);
  assert.equal(m.tool_calls[0].type, 'function');
  assert.equal(m.tool_calls[0].function.name, 'get_time');
  assert.match(m.tool_calls[0].id, /^call_/);
  // streamed: the call's first chunk carries the forced name
  const stream = await client.chat.completions.create({
    model: MODEL, messages: msgs, tools, max_tokens: 8, seed: 5, stream: true,
    tool_choice: { type: 'function', function: { name: 'get_weather' } } });
  let name = '';
  for await (const chunk of stream) {
    for (const tc of chunk.choices[0]?.delta?.tool_calls || []) name += tc.function?.name || '';
  }
  assert.equal(name, 'get_weather');
  // "required" forces a call to some function (the random model picks the name)
  const req = await post('/v1/chat/completions', { messages: msgs, tools, max_tokens: 4,
    tool_choice: 'required' });
  assert.equal(req.status, 200, req.text);
  assertOpenAIError(await post('/v1/chat/completions', { messages: msgs, tools,
    tool_choice: { type: 'function', function: { name: 'nope' } } }), 400, 'tool_choice');
  assertOpenAIError(await post('/v1/chat/completions', { messages: msgs,
    tool_choice: 'required' }), 400, 'tool_choice');
});

test('2000 idle connections do not starve a request', async () => {
  const u = new globalThis.URL(URL);
  const socks = [];
  let connected = 0;
  try {
    await Promise.all(Array.from({ length: 2000 }, () => new Promise((resolve) => {
      const sk = net.connect({ host: u.hostname, port: Number(u.port) }, () => {
        connected++;
        resolve();
      });
      sk.on('error', resolve);
      socks.push(sk);
    })));
    assert.equal(connected, 2000);
    const t0 = Date.now();
    const r = await client.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 4 });
    assert.equal(r.choices.length, 1);
    assert.ok(Date.now() - t0 < 20000, `request took ${Date.now() - t0} ms`);
    await healthy();
  } finally {
    for (const sk of socks) sk.destroy();
  }
});
