'use strict';
// End-to-end test: the Lanonasis Real-time Stream API documentation's `LanOnasisStream` class
// (seed 002:204-263), copied verbatim, on the `eventsource` package v2, plus writes through the
// official SDK `@lanonasis/memory-client@2.2.0`, against Tidepool's Lanonasis dialect
// (`GET /api/v1/stream`, `/api/v1/memory...`; spec/dialects.md §5).
//
// Env: TIDEPOOL_HTTP (e.g. http://127.0.0.1:43215), TIDEPOOL_API_KEY.

const assert = require('node:assert/strict');
const { requiredEnv, failWith, assertIso } = require('./common');
const fail = failWith('lanonasis');
const { createMemoryClient } = require('@lanonasis/memory-client');

const BASE_HTTP = requiredEnv('TIDEPOOL_HTTP');
const KEY = requiredEnv('TIDEPOOL_API_KEY');
const TOTAL_TIMEOUT_MS = 20000;
const STEP_TIMEOUT_MS = 8000;

// Documented adaptation (spec §5): the class uses the global EventSource with a `headers`
// option; in Node that is the `eventsource` package v2 (v3+ dropped `headers`).
globalThis.EventSource = require('eventsource');

// ---------------------------------------------------------------------------------------------
// seed 002:204-263, verbatim (Lanonasis Real-time Stream API, "JavaScript Client Example")
// ---------------------------------------------------------------------------------------------
class LanOnasisStream {
constructor(apiKey, options = {}) {
this.apiKey = apiKey;
this.baseUrl = options.baseUrl || 'https://api.lanonasis.com';
this.eventSource = null;
this.listeners = new Map();
}
connect(events = [], filters = {}) {
const params = new URLSearchParams();
events.forEach(event => params.append('events', event));
Object.entries(filters).forEach(([key, value]) => {
params.append(`filters[${key}]`, value);
});
const url = `${this.baseUrl}/api/v1/stream?${params.toString()}`;
this.eventSource = new EventSource(url, {
headers: {
'Authorization': `Bearer ${this.apiKey}`
}
});
this.eventSource.onopen = () => {
console.log('Stream connected');
};
this.eventSource.onmessage = (event) => {
this.handleEvent(event);
};
this.eventSource.onerror = (error) => {
console.error('Stream error:', error);
this.reconnect();
};
}
handleEvent(event) {
const data = JSON.parse(event.data);
const eventType = event.type || 'message';
if (this.listeners.has(eventType)) {
this.listeners.get(eventType).forEach(callback => {
callback(data);
});
}
}
on(eventType, callback) {
if (!this.listeners.has(eventType)) {
this.listeners.set(eventType, []);
}
this.listeners.get(eventType).push(callback);
}
reconnect() {
setTimeout(() => {
if (this.eventSource) {
this.eventSource.close();
this.connect();
}
}, 5000);
}
close() {
if (this.eventSource) {
this.eventSource.close();
this.eventSource = null;
}
}
}
// ---------------------------------------------------------------------------------------------
// end of seed code
// ---------------------------------------------------------------------------------------------

function assertNonEmptyString(value, what) {
  assert.equal(typeof value, 'string', `${what} must be a string, got ${JSON.stringify(value)}`);
  assert.ok(value.length > 0, `${what} must be non-empty`);
}

const MEMORY_EVENTS = ['memory.created', 'memory.updated', 'memory.deleted', 'search.performed'];

/**
 * The class wires only `onmessage`, which never fires for NAMED events; spec §5.4: an
 * application using the class unchanged adds `addEventListener(type, e => stream.handleEvent(e))`
 * for each subscribed type plus `heartbeat` and `error`.
 * For `error` the guard skips eventsource's own transport-error Event (connection refused or
 * ended), which carries no `data`; the class's `handleEvent` would throw on JSON.parse(undefined).
 * Returns a log of the events the class delivered to `stream.on(...)` listeners.
 */
function wireNamedEvents(stream, types) {
  for (const type of types) {
    if (type === 'error') {
      stream.eventSource.addEventListener(type, e => { if (typeof e.data === 'string') stream.handleEvent(e); });
    } else {
      stream.eventSource.addEventListener(type, e => stream.handleEvent(e));
    }
  }
}

/** Collects what `stream.on(type, ...)` delivers, in arrival order, and lets the test wait. */
function recordStream(stream, types, label) {
  const rec = { events: [], waiters: [], label, opened: false };
  const wake = () => { for (const w of [...rec.waiters]) w(); };
  for (const type of types) stream.on(type, data => { rec.events.push({ type, data }); wake(); });
  rec.waitFor = (pred, what, timeout = STEP_TIMEOUT_MS) => new Promise((resolve, reject) => {
    const check = () => {
      const hit = rec.events.find(pred);
      if (hit) { done(); resolve(hit); }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`[${label}] timed out after ${timeout} ms waiting for ${what}; stream events so far: ${JSON.stringify(rec.events)}`));
    }, timeout);
    const done = () => { clearTimeout(timer); rec.waiters = rec.waiters.filter(w => w !== check); };
    rec.waiters.push(check);
    check();
  });
  return rec;
}

/** Waits until the EventSource is OPEN (the response headers arrived). */
function waitOpen(es, label) {
  return new Promise((resolve, reject) => {
    if (es.readyState === 1) { resolve(); return; }
    const timer = setTimeout(() => { clearInterval(poll); reject(new Error(`[${label}] the stream did not open within ${STEP_TIMEOUT_MS} ms (readyState ${es.readyState})`)); }, STEP_TIMEOUT_MS);
    const poll = setInterval(() => {
      if (es.readyState === 1) { clearInterval(poll); clearTimeout(timer); resolve(); }
      if (es.readyState === 2) { clearInterval(poll); clearTimeout(timer); reject(new Error(`[${label}] the stream was closed by the client library (HTTP status not 200?)`)); }
    }, 10);
  });
}

/** SDK results are `{data, meta}` or `{error, meta}` (dist/index.cjs CoreMemoryClient.request). */
function sdkData(result, what) {
  assert.ok(result && typeof result === 'object', `${what}: SDK returned ${JSON.stringify(result)}`);
  assert.equal(result.error, undefined, `${what}: SDK returned an error: ${JSON.stringify(result.error)}`);
  assert.notEqual(result.data, undefined, `${what}: SDK returned no data: ${JSON.stringify(result)}`);
  return result.data;
}

function assertMemoryEntry(m, what) {
  assert.ok(m && typeof m === 'object' && !Array.isArray(m), `${what}: expected a MemoryEntry object, got ${JSON.stringify(m)}`);
  assertNonEmptyString(m.id, `${what}.id`);
  for (const f of ['title', 'content', 'memory_type', 'status', 'user_id']) {
    assert.equal(typeof m[f], 'string', `${what}.${f} must be a string, got ${JSON.stringify(m[f])}`);
  }
  assert.equal(typeof m.access_count, 'number', `${what}.access_count must be a number`);
  assert.ok(Array.isArray(m.tags), `${what}.tags must be an array`);
  assert.ok(m.metadata && typeof m.metadata === 'object', `${what}.metadata must be an object`);
  assertIso(m.created_at, `${what}.created_at`);
  assertIso(m.updated_at, `${what}.updated_at`);
}

async function main() {
  const ALL = [...MEMORY_EVENTS, 'heartbeat', 'error'];

  // --- 1. The stream, with the seed class ---
  const stream = new LanOnasisStream(KEY, { baseUrl: BASE_HTTP });
  stream.connect(['memory.created', 'memory.updated', 'memory.deleted', 'search.performed']);
  wireNamedEvents(stream, ALL);
  const rec = recordStream(stream, ALL, 'stream');
  // The SSE ids (spec §5.2: every memory/search event has a non-empty id no other event repeats);
  // the class drops them, so they are read from the EventSource directly.
  const wireIds = [];
  for (const type of MEMORY_EVENTS) stream.eventSource.addEventListener(type, e => wireIds.push({ type, id: e.lastEventId }));
  await waitOpen(stream.eventSource, 'stream');
  // The subscription exists once the response has started; give the server a moment anyway.
  await new Promise(r => setTimeout(r, 200));

  // --- 2. Writes with the official SDK ---
  // retry.maxRetries 0: a failing call must fail now, not after the SDK's backoff.
  const client = createMemoryClient({ apiUrl: BASE_HTTP, apiKey: KEY, timeout: 5000, retry: { maxRetries: 0 } });
  const marker = `tidepool-e2e-${process.pid}-${Date.now()}`;
  const input = {
    title: 'Tidepool e2e memory',
    content: `Quokkas are marsupials ${marker}`,
    memory_type: 'knowledge',
    tags: ['e2e', 'quokka'],
    metadata: { source: 'node-e2e', run: marker },
  };

  const created = sdkData(await client.createMemory(input), 'createMemory');
  assertMemoryEntry(created, 'createMemory data');
  assert.equal(created.title, input.title, 'createMemory: title');
  assert.equal(created.content, input.content, 'createMemory: content');
  assert.equal(created.memory_type, input.memory_type, 'createMemory: memory_type');
  assert.deepEqual(created.tags, input.tags, 'createMemory: tags');
  assert.deepEqual(created.metadata, input.metadata, 'createMemory: metadata');
  const id = created.id;

  const newContent = `Quokkas are small marsupials from Western Australia ${marker}`;
  const newTags = ['e2e', 'quokka', 'updated'];
  const updated = sdkData(await client.updateMemory(id, { content: newContent, tags: newTags }), 'updateMemory');
  assertMemoryEntry(updated, 'updateMemory data');
  assert.equal(updated.id, id, 'updateMemory: id');
  assert.equal(updated.content, newContent, 'updateMemory: content');
  assert.deepEqual(updated.tags, newTags, 'updateMemory: tags');
  assert.deepEqual(updated.metadata, input.metadata, 'updateMemory: metadata untouched');

  const query = `quokkas ${marker}`;
  const search = sdkData(await client.searchMemories({ query, limit: 10 }), 'searchMemories');
  assert.ok(Array.isArray(search.results), `searchMemories: data.results must be an array, got ${JSON.stringify(search)}`);
  assert.ok(search.results.some(r => r && r.id === id),
    `searchMemories: the results must contain the memory ${id}: ${JSON.stringify(search.results)}`);
  assert.equal(search.query, query, 'searchMemories: data.query');
  assert.equal(typeof search.total_results, 'number', 'searchMemories: data.total_results must be a number');
  assert.equal(typeof search.search_time_ms, 'number', 'searchMemories: data.search_time_ms must be a number');

  const got = sdkData(await client.getMemory(id), 'getMemory');
  assertMemoryEntry(got, 'getMemory data');
  assert.equal(got.id, id, 'getMemory: id');
  assert.equal(got.content, newContent, 'getMemory: content after update');
  assert.deepEqual(got.tags, newTags, 'getMemory: tags after update');

  const list = sdkData(await client.listMemories(), 'listMemories');
  assert.ok(Array.isArray(list.data), `listMemories: data.data must be an array, got ${JSON.stringify(list)}`);
  assert.ok(list.data.some(m => m && m.id === id), `listMemories: the list must contain ${id}`);
  assert.ok(list.pagination && typeof list.pagination === 'object', 'listMemories: data.pagination must be an object');

  // spec §5.3: 204, no body. The SDK parses the body as JSON whenever the response's
  // Content-Type says application/json, so a 204 must not claim a JSON body.
  const del = await client.deleteMemory(id);
  assert.equal(del.error, undefined, `deleteMemory: SDK returned an error: ${JSON.stringify(del.error)}`);

  const gone = await client.getMemory(id);
  assert.ok(gone.error, `getMemory after delete must fail, got ${JSON.stringify(gone)}`);
  assert.equal(gone.error.statusCode, 404, `getMemory after delete: expected HTTP 404, got ${JSON.stringify(gone.error)}`);

  // A bad key: HTTP 401, which the SDK reports as AUTH_ERROR.
  const badClient = createMemoryClient({ apiUrl: BASE_HTTP, apiKey: 'not-a-valid-key', timeout: 5000, retry: { maxRetries: 0 } });
  const denied = await badClient.listMemories();
  assert.ok(denied.error, `listMemories with a bad key must fail, got ${JSON.stringify(denied)}`);
  assert.equal(denied.error.statusCode, 401, `bad key: expected HTTP 401, got ${JSON.stringify(denied.error)}`);
  assert.equal(denied.error.code, 'AUTH_ERROR', 'bad key: SDK error code');

  // --- 3. What the stream delivered ---
  await rec.waitFor(e => e.type === 'memory.deleted', 'memory.deleted');
  const memEvents = rec.events.filter(e => MEMORY_EVENTS.includes(e.type));
  assert.deepEqual(memEvents.map(e => e.type),
    ['memory.created', 'memory.updated', 'search.performed', 'memory.deleted'],
    'the stream must deliver the events in write order');
  const errors = rec.events.filter(e => e.type === 'error');
  assert.deepEqual(errors, [], 'the stream must not deliver error events');

  assert.equal(wireIds.length, 4, `expected 4 memory/search events on the wire, got ${JSON.stringify(wireIds)}`);
  for (const w of wireIds) assert.ok(typeof w.id === 'string' && w.id.length > 0, `${w.type}: the SSE event must carry a non-empty id:`);
  assert.equal(new Set(wireIds.map(w => w.id)).size, wireIds.length, `SSE event ids must be unique: ${JSON.stringify(wireIds)}`);

  const [ev1, ev2, ev3, ev4] = memEvents.map(e => e.data);
  assert.equal(ev1.id, id, 'memory.created.id');
  assert.equal(ev1.content, input.content, 'memory.created.content');
  assert.deepEqual(ev1.metadata, input.metadata, 'memory.created.metadata (as written)');
  assert.deepEqual(ev1.tags, input.tags, 'memory.created.tags (as written)');
  assertIso(ev1.created_at, 'memory.created.created_at');
  assert.equal(typeof ev1.created_by, 'string', 'memory.created.created_by must be a string');

  assert.equal(ev2.id, id, 'memory.updated.id');
  assert.equal(ev2.content, newContent, 'memory.updated.content (new)');
  assert.deepEqual(ev2.tags, newTags, 'memory.updated.tags (new)');
  assertIso(ev2.updated_at, 'memory.updated.updated_at');
  assert.equal(typeof ev2.updated_by, 'string', 'memory.updated.updated_by must be a string');
  assert.deepEqual(ev2.changes, { content: true, metadata: false, tags: true },
    'memory.updated.changes: true exactly for the fields the update touched');

  assert.equal(ev3.query, query, 'search.performed.query');
  assert.ok(Number.isInteger(ev3.results_count), `search.performed.results_count must be an integer, got ${JSON.stringify(ev3.results_count)}`);
  assert.ok(ev3.results_count >= 1, 'search.performed.results_count must count the hit');
  assert.equal(typeof ev3.execution_time, 'number', 'search.performed.execution_time must be a number');
  assertIso(ev3.timestamp, 'search.performed.timestamp');

  assert.equal(ev4.id, id, 'memory.deleted.id');
  assertIso(ev4.deleted_at, 'memory.deleted.deleted_at');
  assert.equal(typeof ev4.deleted_by, 'string', 'memory.deleted.deleted_by must be a string');
  assertNonEmptyString(ev4.reason, 'memory.deleted.reason');

  // Close the stream: the class's reconnect() would otherwise reconnect on the next error.
  stream.close();

  // --- 4. A bad key: an in-stream `error` event with code AUTH_ERROR (status 200) ---
  const badStream = new LanOnasisStream('not-a-valid-key', { baseUrl: BASE_HTTP });
  badStream.connect(['memory.created']);
  wireNamedEvents(badStream, ['memory.created', 'heartbeat', 'error']);
  const badRec = recordStream(badStream, ['memory.created', 'heartbeat', 'error'], 'bad-key stream');
  const authErr = await badRec.waitFor(e => e.type === 'error',
    'an `error` event AUTH_ERROR (a non-200 status never reaches stream.on("error") with data)');
  badStream.close();
  assert.equal(authErr.data.code, 'AUTH_ERROR', `expected code AUTH_ERROR, got ${JSON.stringify(authErr.data)}`);
  assert.equal(typeof authErr.data.message, 'string', 'error.message must be a string');
  assert.equal(authErr.data.retry_after, 0, 'AUTH_ERROR retry_after must be 0');

  // The class's reconnect() timer (5 s) may still be pending; exit explicitly.
  console.log('PASS lanonasis');
  process.exit(0);
}

setTimeout(() => fail(`the whole script took longer than ${TOTAL_TIMEOUT_MS} ms`), TOTAL_TIMEOUT_MS);
process.on('uncaughtException', e => fail(`uncaught exception: ${e && e.stack || e}`));
main().catch(e => fail(e && e.message || String(e)));
