'use strict';
// End-to-end test: the EVA WebSocket Chat API reference's JavaScript snippets (seed 004:337-361,
// 467-525), copied verbatim, against Tidepool's EVA dialect on `/eva/ws` (spec/dialects.md §4).
//
// Env: TIDEPOOL_WS (e.g. ws://127.0.0.1:43215), TIDEPOOL_API_KEY.
// Precondition (done by the harness): collection `products` holds
//   {"name":"ekoDB Pro","price":99,"description":"A fast database with search"}.

const assert = require('node:assert/strict');
const { requiredEnv, failWith, assertIso } = require('./common');
const fail = failWith('eva');

const BASE_WS = requiredEnv('TIDEPOOL_WS');
const KEY = requiredEnv('TIDEPOOL_API_KEY');
const TOTAL_TIMEOUT_MS = 20000;
const STEP_TIMEOUT_MS = 8000;
// EVA is mounted at /eva/ws on Tidepool's main listener (spec §1); the seed's URL is
// ws://localhost:8000/ws (the optional separate EVA listener).
const EVA_URL = `${BASE_WS}/eva/ws`;

// Documented adaptation: Node 20 has no global WebSocket. The `ws` package is a WebSocket
// client that can also send the Authorization header the docs list (spec §4 "Clients").
globalThis.WebSocket = require('ws');

const EMOTIONS = ['neutral', 'happy', 'excited', 'thoughtful', 'curious', 'confident', 'concerned', 'empathetic'];

// ---------------------------------------------------------------------------------------------
// Seed snippets, verbatim. Each is wrapped in a function so that it runs on a given `ws` (the
// snippets use a free variable `ws`); the function bodies are the documentation's code.
// ---------------------------------------------------------------------------------------------

// seed 004:467-474 ("Test different auth methods"), with the documented URL replaced by EVA_URL.
function seedAuthMethods(apiKey) {
// Verify API key encoding
const encodedKey = encodeURIComponent(apiKey);
// Test different auth methods
// Method 1: Query parameter
const ws1 = new WebSocket(`${EVA_URL}?token=${encodedKey}`);
// Method 2: Subprotocol
const ws2 = new WebSocket(EVA_URL, ['chat', `${apiKey}`]);
// Method 3: Header (if your client supports it)
// This varies by WebSocket client implementation
return { ws1, ws2 };
}

// seed 004:337-361 ("Connection event handling")
function seedConnectionEvents(ws) {
// Connection event handling
ws.onopen = function(event) {
console.log('WebSocket connection opened');
// Connection established, ready to start conversation
};
ws.onclose = function(event) {
switch(event.code) {
case 1000: // Normal closure
console.log('Connection closed normally');
break;
case 1008: // Policy violation (auth failed)
console.error('Authentication failed:', event.reason);
break;
case 1011: // Internal error
console.error('Server error:', event.reason);
break;
default:
console.warn('Connection closed unexpectedly:', event.code, event.reason);
}
};
ws.onerror = function(error) {
console.error('WebSocket error:', error);
};
}

// seed 004:485-499 ("Ensure proper sequence")
function seedProperSequence(ws) {
// Ensure proper sequence
ws.onopen = function() {
// 1. Start conversation first
ws.send(JSON.stringify({type: 'start_conversation'}));
};
ws.onmessage = function(event) {
const data = JSON.parse(event.data);
if (data.type === 'conversation_started') {
// 2. Only send messages after conversation started
ws.send(JSON.stringify({
type: 'user_message',
content: 'Hello!'
}));
}
};
}

// seed 004:506-521 ("Buffer all chunks"); `displayCompleteResponse` is the application's.
function seedChunkBuffering(ws, displayCompleteResponse) {
let responseBuffer = [];
let currentChunkId = null;
ws.onmessage = function(event) {
const data = JSON.parse(event.data);
if (data.type === 'message') {
// Buffer all chunks
responseBuffer.push({
content: data.content,
emotion: data.emotion,
chunk_id: data.chunk_id
});
// Only process complete response
if (data.is_final) {
displayCompleteResponse(responseBuffer);
responseBuffer = []; // Reset for next response
}
}
};
}
// ---------------------------------------------------------------------------------------------
// end of seed code
// ---------------------------------------------------------------------------------------------


/**
 * Records every frame and the close of a WebSocket (via addEventListener, so the seed's
 * on* handlers stay in place) and lets the test wait for frames in order.
 */
function record(ws, label) {
  const rec = { frames: [], waiters: [], cursor: 0, closed: null, opened: false, label };
  const wake = () => { for (const w of [...rec.waiters]) w(); };
  ws.addEventListener('open', () => { rec.opened = true; wake(); });
  ws.addEventListener('message', (event) => {
    let data;
    try { data = JSON.parse(event.data); } catch (e) { data = { type: '<non-JSON>', raw: String(event.data) }; }
    rec.frames.push(data);
    wake();
  });
  ws.addEventListener('close', (event) => { rec.closed = { code: event.code, reason: String(event.reason) }; wake(); });
  ws.addEventListener('error', (event) => { rec.error = String(event.message || event.error || event); wake(); });
  const waitUntil = (test, what, timeout = STEP_TIMEOUT_MS) => new Promise((resolve, reject) => {
    const check = () => {
      let r;
      try { r = test(); } catch (e) { done(); reject(e); return; }
      if (r !== undefined) { done(); resolve(r); }
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`[${label}] timed out after ${timeout} ms waiting for ${what}; frames: ` +
        `${JSON.stringify(rec.frames)}; close: ${JSON.stringify(rec.closed)}; error: ${rec.error || 'none'}`));
    }, timeout);
    const done = () => { clearTimeout(timer); rec.waiters = rec.waiters.filter(w => w !== check); };
    rec.waiters.push(check);
    check();
  });
  rec.open = () => waitUntil(() => {
    if (rec.opened) return true;
    if (rec.closed || rec.error) {
      throw new Error(`[${label}] connection failed before open: error ${rec.error || 'none'}, close ${JSON.stringify(rec.closed)}`);
    }
    return undefined;
  }, 'the WebSocket handshake');
  /** Next frame (after the cursor) satisfying pred; a close before it fails. */
  rec.next = (pred, what, timeout) => waitUntil(() => {
    while (rec.cursor < rec.frames.length) {
      const f = rec.frames[rec.cursor++];
      if (pred(f)) return f;
    }
    if (rec.closed) {
      throw new Error(`[${label}] connection closed (${JSON.stringify(rec.closed)}) while waiting for ${what}; frames: ${JSON.stringify(rec.frames)}`);
    }
    return undefined;
  }, what, timeout);
  rec.close = () => waitUntil(() => rec.closed || undefined, 'the close');
  return rec;
}

/** Waits for `conversation_started` (or fails on an error frame) and checks it. */
async function expectConversationStarted(rec, expectedId) {
  const f = await rec.next(x => x.type === 'conversation_started' || x.type === 'error', 'conversation_started');
  assert.equal(f.type, 'conversation_started', `[${rec.label}] expected conversation_started, got ${JSON.stringify(f)}`);
  assert.equal(typeof f.conversation_id, 'string', `[${rec.label}] conversation_started.conversation_id must be a string`);
  assert.ok(f.conversation_id.length > 0, `[${rec.label}] conversation_started.conversation_id must be non-empty`);
  if (expectedId !== undefined) {
    assert.equal(f.conversation_id, expectedId, `[${rec.label}] resume must give back the same conversation_id`);
  }
  if (f.metadata && f.metadata.timestamp !== undefined) assertIso(f.metadata.timestamp, 'conversation_started.metadata.timestamp');
  return f.conversation_id;
}

/** Collects one answer (message frames up to is_final:true) and checks every chunk (spec §4.3). */
async function collectAnswer(rec, conversationId, { minChunks = 1 } = {}) {
  const chunks = [];
  for (;;) {
    const f = await rec.next(x => x.type === 'message' || x.type === 'error', `a message chunk (have ${chunks.length})`, 12000);
    assert.equal(f.type, 'message', `[${rec.label}] expected message chunks, got ${JSON.stringify(f)}`);
    chunks.push(f);
    if (f.is_final === true) break;
  }
  const ids = new Set();
  chunks.forEach((c, i) => {
    const where = `[${rec.label}] chunk ${i} ${JSON.stringify(c)}`;
    assert.equal(typeof c.content, 'string', `${where}: content must be a string`);
    assert.ok(EMOTIONS.includes(c.emotion), `${where}: emotion must be one of ${EMOTIONS.join(' ')}`);
    assert.equal(typeof c.chunk_id, 'string', `${where}: chunk_id must be a string`);
    assert.ok(c.chunk_id.length > 0, `${where}: chunk_id must be non-empty`);
    assert.ok(!ids.has(c.chunk_id), `${where}: chunk_id repeats an earlier chunk's`);
    ids.add(c.chunk_id);
    assert.equal(typeof c.is_final, 'boolean', `${where}: is_final must be a boolean`);
    assert.equal(c.is_final, i === chunks.length - 1, `${where}: only the last chunk may have is_final true`);
    assert.ok(c.metadata && typeof c.metadata === 'object', `${where}: metadata must be an object`);
    assert.equal(c.metadata.conversation_id, conversationId, `${where}: metadata.conversation_id must be the conversation's`);
    assertIso(c.metadata.timestamp, `${where}: metadata.timestamp`);
    assert.ok(Array.isArray(c.metadata.sources), `${where}: metadata.sources must be an array`);
    c.metadata.sources.forEach(s => assert.equal(typeof s, 'string', `${where}: metadata.sources entries must be strings`));
  });
  assert.ok(chunks.length >= minChunks, `[${rec.label}] expected at least ${minChunks} chunks, got ${chunks.length}`);
  return chunks;
}

async function main() {
  const QUESTION = 'What is the price of ekoDB Pro?';

  // --- 1. The seed's auth methods: query parameter and subprotocol ['chat', key] ---
  const { ws1, ws2 } = seedAuthMethods(KEY);
  const rec1 = record(ws1, 'query-token');
  const rec2 = record(ws2, 'subprotocol');

  // ws2 (subprotocol) runs the seed's "proper sequence" and "chunk buffering" snippets.
  // Each snippet assigns ws.onmessage; the application runs both handlers on every frame.
  let completeResponses = [];
  let resolveComplete;
  const completed = new Promise(r => { resolveComplete = r; });
  seedConnectionEvents(ws2);
  seedProperSequence(ws2);
  const sequenceHandler = ws2.onmessage;
  seedChunkBuffering(ws2, (buffer) => { completeResponses.push(buffer.slice()); resolveComplete(); });
  const bufferingHandler = ws2.onmessage;
  ws2.onmessage = function (event) { sequenceHandler(event); bufferingHandler(event); };

  await rec2.open();
  assert.equal(ws2.protocol, 'chat', 'the server must select the subprotocol "chat" (spec §4.1)');
  const conv2 = await expectConversationStarted(rec2);
  const seedChunks = await collectAnswer(rec2, conv2);
  await Promise.race([completed, new Promise((_, rej) => setTimeout(() => rej(new Error('seed displayCompleteResponse never called')), 2000))]);
  assert.equal(completeResponses.length, 1, 'the seed buffering snippet must see exactly one complete response');
  assert.deepEqual(completeResponses[0].map(c => c.chunk_id), seedChunks.map(c => c.chunk_id),
    'the seed buffer must hold every chunk of the answer');
  console.log(`subprotocol auth + seed sequence: conversation ${conv2}, answer to "Hello!": ` +
    JSON.stringify(completeResponses[0].map(c => c.content).join('')));
  ws2.close(1000);

  // ws1 (query parameter): start a conversation.
  await rec1.open();
  ws1.send(JSON.stringify({ type: 'start_conversation' }));
  await expectConversationStarted(rec1);
  ws1.close(1000);

  // --- 2. Authorization header (ws options); start_conversation with conversation_id null ---
  const ws3 = new WebSocket(EVA_URL, { headers: { Authorization: `Bearer ${KEY}` } });
  const rec3 = record(ws3, 'header');
  await rec3.open();
  ws3.send(JSON.stringify({ type: 'start_conversation', conversation_id: null }));
  const conv3 = await expectConversationStarted(rec3);
  assert.notEqual(conv3, conv2, 'conversation_id null must start a NEW conversation');
  ws3.send(JSON.stringify({ type: 'user_message', content: QUESTION }));
  const answer3 = await collectAnswer(rec3, conv3, { minChunks: 2 });
  const text3 = answer3.map(c => c.content).join('');
  assert.match(text3, /99/, `the answer must mention the price 99, got ${JSON.stringify(text3)}`);
  console.log(`header auth: conversation ${conv3}, ${answer3.length} chunks: ${JSON.stringify(text3)}`);
  ws3.close(1000);
  const close3 = await rec3.close();
  assert.equal(close3.code, 1000, `a client close 1000 must be completed with 1000, got ${JSON.stringify(close3)}`);

  // --- 3. Resume: a second connection continues the first conversation by id ---
  const ws4 = new WebSocket(EVA_URL, ['chat', KEY]);
  const rec4 = record(ws4, 'resume');
  await rec4.open();
  ws4.send(JSON.stringify({ type: 'start_conversation', conversation_id: conv3 }));
  await expectConversationStarted(rec4, conv3);
  ws4.send(JSON.stringify({ type: 'user_message', content: QUESTION }));
  await collectAnswer(rec4, conv3);
  ws4.close(1000);

  // --- 4. Bad key (subprotocol): accepted upgrade, error INVALID_API_KEY, then close 1008 ---
  const ws5 = new WebSocket(EVA_URL, ['chat', 'not-a-valid-key']);
  const rec5 = record(ws5, 'bad-key');
  seedConnectionEvents(ws5);
  await rec5.open(); // a refused upgrade (HTTP 401/403) would fail here (spec §4.5, §6.3)
  assert.equal(ws5.protocol, 'chat', 'the server must select "chat" also when the key is invalid (spec §4.1)');
  const closed5 = await rec5.close();
  const err5 = rec5.frames.find(f => f.type === 'error');
  assert.ok(err5, `expected an error frame before the close; frames: ${JSON.stringify(rec5.frames)}`);
  assert.equal(typeof err5.content, 'string', 'error.content must be a string');
  assert.ok(err5.metadata && err5.metadata.error_code === 'INVALID_API_KEY',
    `expected metadata.error_code INVALID_API_KEY, got ${JSON.stringify(err5)}`);
  assert.equal(closed5.code, 1008, `expected close code 1008 after INVALID_API_KEY, got ${JSON.stringify(closed5)}`);

  // Bad key via the Authorization header: same refusal.
  const ws6 = new WebSocket(EVA_URL, { headers: { Authorization: 'Bearer not-a-valid-key' } });
  const rec6 = record(ws6, 'bad-header');
  await rec6.open();
  const closed6 = await rec6.close();
  const err6 = rec6.frames.find(f => f.type === 'error');
  assert.ok(err6 && err6.metadata && err6.metadata.error_code === 'INVALID_API_KEY',
    `expected an INVALID_API_KEY error frame; frames: ${JSON.stringify(rec6.frames)}`);
  assert.equal(closed6.code, 1008, `expected close code 1008, got ${JSON.stringify(closed6)}`);

  console.log('PASS eva');
  process.exit(0);
}

setTimeout(() => fail(`the whole script took longer than ${TOTAL_TIMEOUT_MS} ms`), TOTAL_TIMEOUT_MS);
process.on('uncaughtException', e => fail(`uncaught exception: ${e && e.stack || e}`));
main().catch(e => fail(e && e.message || String(e)));
