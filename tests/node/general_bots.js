'use strict';
// End-to-end test: the General Bots documentation's `BotClient` class (seed 001:133-182),
// copied verbatim, against Tidepool's General Bots dialect on `/ws` (spec/dialects.md §2).
//
// Env: TIDEPOOL_WS (e.g. ws://127.0.0.1:43215), TIDEPOOL_API_KEY.
// Precondition (done by the harness): collection `products` holds
//   {"name":"ekoDB Pro","price":99,"description":"A fast database with search"}.

const assert = require('node:assert/strict');
const { requiredEnv, failWith, assertIso } = require('./common');
const fail = failWith('general_bots');

const BASE_WS = requiredEnv('TIDEPOOL_WS');
const KEY = requiredEnv('TIDEPOOL_API_KEY');
const TOTAL_TIMEOUT_MS = 20000;
const STEP_TIMEOUT_MS = 8000;

// Documented adaptation: Node 20 has no global WebSocket; the seed class uses the global
// `WebSocket` (constructor and `WebSocket.OPEN`), so provide the `ws` package's.
globalThis.WebSocket = require('ws');

// ---------------------------------------------------------------------------------------------
// seed 001:133-182, verbatim (General Bots docs/api/websocket.md, "JavaScript Client Example")
// ---------------------------------------------------------------------------------------------
class BotClient {
constructor(url, token) {
this.url = url;
this.token = token;
this.ws = null;
this.handlers = {};
}
connect() {
this.ws = new WebSocket(`${this.url}?token=${this.token}`);
this.ws.onopen = () => {
console.log('Connected to bot');
this.emit('connected');
};
this.ws.onmessage = (event) => {
const data = JSON.parse(event.data);
this.emit(data.type, data);
};
this.ws.onclose = () => {
console.log('Disconnected');
this.emit('disconnected');
// Auto-reconnect after 3 seconds
setTimeout(() => this.connect(), 3000);
};
this.ws.onerror = (error) => {
console.error('WebSocket error:', error);
this.emit('error', error);
};
}
send(type, payload) {
if (this.ws?.readyState === WebSocket.OPEN) {
this.ws.send(JSON.stringify({ type, ...payload }));
}
}
sendMessage(sessionId, content) {
this.send('message', { session_id: sessionId, content });
}
subscribe(sessionId) {
this.send('subscribe', { session_id: sessionId });
}
on(event, handler) {
this.handlers[event] = this.handlers[event] || [];
this.handlers[event].push(handler);
}
emit(event, data) {
(this.handlers[event] || []).forEach(h => h(data));
}
disconnect() {
this.ws?.close();
}
}
// ---------------------------------------------------------------------------------------------
// end of seed code
// ---------------------------------------------------------------------------------------------


// Every frame type the server may send (spec §2.3) plus the class's own connection events;
// BotClient has no wildcard, so a recorder subscribes to each type.
const SERVER_TYPES = [
  'session_created', 'stream_start', 'stream_chunk', 'stream_end', 'bot_typing', 'pong',
  'error', 'message', 'tool_call', 'tool_result', 'session_closed',
];

/** Records everything a BotClient emits, in order, and lets the test wait for frames. */
function record(client, label) {
  const rec = { frames: [], waiters: [], cursor: 0, label };
  const push = (type, data) => {
    // The class emits the WebSocket library's error event under 'error' too: tag it.
    // (A library event object has a `target`; a parsed JSON frame does not.)
    const isTransport = type === 'error' && (data == null || typeof data !== 'object' || 'target' in data);
    const frame = isTransport ? { type: 'transport_error', error: String(data && (data.message || data.error || data)) }
      : type === 'connected' || type === 'disconnected' ? { type } : data;
    rec.frames.push(frame);
    for (const w of [...rec.waiters]) w();
  };
  for (const t of SERVER_TYPES) client.on(t, d => push(t, d));
  client.on('connected', () => push('connected'));
  client.on('disconnected', () => push('disconnected'));
  /** Wait for the next frame (after the cursor) satisfying pred; fail if a disconnect comes first. */
  rec.next = (pred, what, { timeout = STEP_TIMEOUT_MS, allowDisconnect = false } = {}) =>
    new Promise((resolve, reject) => {
      const check = () => {
        while (rec.cursor < rec.frames.length) {
          const f = rec.frames[rec.cursor++];
          if (pred(f)) { done(); resolve(f); return; }
          if (!allowDisconnect && f.type === 'disconnected') {
            done();
            reject(new Error(`[${label}] connection closed while waiting for ${what}; frames so far: ${JSON.stringify(rec.frames)}`));
            return;
          }
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`[${label}] timed out after ${timeout} ms waiting for ${what}; frames so far: ${JSON.stringify(rec.frames)}`));
      }, timeout);
      const done = () => { clearTimeout(timer); rec.waiters = rec.waiters.filter(w => w !== check); };
      rec.waiters.push(check);
      check();
    });
  return rec;
}

async function main() {
  // --- 1. connect with the token in the query (the class appends `?token=`), get a session ---
  const client = new BotClient(`${BASE_WS}/ws`, KEY);
  const rec = record(client, 'main');
  client.connect();
  await rec.next(f => f.type === 'connected', 'the WebSocket to open (connected)');
  const created = await rec.next(f => f.type === 'session_created' || f.type === 'error',
    'session_created after authentication (spec §2.1)');
  assert.equal(created.type, 'session_created',
    `expected session_created after a valid ?token=, got ${JSON.stringify(created)}`);
  assert.equal(typeof created.session_id, 'string', 'session_created.session_id must be a string');
  assert.ok(created.session_id.length > 0, 'session_created.session_id must be non-empty');
  const sessionId = created.session_id;

  // --- 2. a question, answered as stream_start -> stream_chunk* -> stream_end (spec §2.3, §2.4) ---
  const answerStart = rec.cursor;
  client.sendMessage(sessionId, 'What is the price of ekoDB Pro?');
  const end = await rec.next(f => f.type === 'stream_end' || f.type === 'error',
    'stream_end answering "What is the price of ekoDB Pro?"', { timeout: 12000 });
  assert.equal(end.type, 'stream_end', `expected the answer to end with stream_end, got ${JSON.stringify(end)}`);
  const answer = rec.frames.slice(answerStart, rec.cursor);
  const startIdx = answer.findIndex(f => f.type === 'stream_start');
  assert.ok(startIdx >= 0, `no stream_start before stream_end; frames: ${JSON.stringify(answer)}`);
  const start = answer[startIdx];
  assert.equal(start.session_id, sessionId, 'stream_start.session_id must be the message\'s session');
  assert.equal(typeof start.message_id, 'string', 'stream_start.message_id must be a string');
  assert.ok(start.message_id.length > 0, 'stream_start.message_id must be non-empty');
  assert.equal(end.message_id, start.message_id, 'stream_end.message_id must equal stream_start.message_id');
  const chunksBeforeStart = answer.slice(0, startIdx).filter(f => f.type === 'stream_chunk');
  assert.equal(chunksBeforeStart.length, 0, 'a stream_chunk arrived before stream_start');
  const chunks = answer.slice(startIdx + 1).filter(f => f.type === 'stream_chunk');
  for (const c of chunks) {
    assert.equal(c.message_id, start.message_id, `stream_chunk.message_id differs from stream_start's: ${JSON.stringify(c)}`);
    assert.equal(typeof c.content, 'string', `stream_chunk.content must be a string: ${JSON.stringify(c)}`);
  }
  assert.ok(chunks.length >= 2, `expected at least 2 stream_chunk frames (token streaming), got ${chunks.length}`);
  assert.equal(typeof end.content, 'string', 'stream_end.content must be a string');
  assert.equal(end.content, chunks.map(c => c.content).join(''),
    'stream_end.content must be the exact concatenation of the stream_chunk contents');
  assert.match(end.content, /99/, `the answer must mention the price 99, got ${JSON.stringify(end.content)}`);
  const typing = answer.find(f => f.type === 'bot_typing' && f.is_typing === true);
  assert.ok(typing, `expected a bot_typing {is_typing:true} before stream_end; frames: ${JSON.stringify(answer)}`);
  assert.equal(typing.session_id, sessionId, 'bot_typing.session_id must be the session');
  const errorsInAnswer = answer.filter(f => f.type === 'error' || f.type === 'transport_error');
  assert.deepEqual(errorsInAnswer, [], 'unexpected error frames during the answer');
  console.log(`answer (${chunks.length} chunks): ${end.content}`);

  // --- 3. ping -> pong with an ISO-8601 timestamp ---
  client.send('ping', {});
  const pong = await rec.next(f => f.type === 'pong' || f.type === 'error', 'pong answering ping');
  assert.equal(pong.type, 'pong', `expected pong, got ${JSON.stringify(pong)}`);
  assertIso(pong.timestamp, 'pong.timestamp');

  // --- 4. a message to an unknown session -> error SESSION_NOT_FOUND ---
  client.sendMessage('00000000-0000-4000-8000-000000000000', 'Hello!');
  const err = await rec.next(f => f.type === 'error' || f.type === 'stream_start',
    'error SESSION_NOT_FOUND for an unknown session_id');
  assert.equal(err.type, 'error', `expected an error frame, got ${JSON.stringify(err)}`);
  assert.equal(err.code, 'SESSION_NOT_FOUND', `expected code SESSION_NOT_FOUND, got ${JSON.stringify(err)}`);
  assert.equal(typeof err.message, 'string', 'error.message must be a string');

  // The connection is still usable afterwards.
  client.send('ping', {});
  const pong2 = await rec.next(f => f.type === 'pong', 'pong after the SESSION_NOT_FOUND error');
  assertIso(pong2.timestamp, 'pong.timestamp');

  // --- 5. a bad token -> error AUTH_FAILED and no session_created (spec §2.1) ---
  const bad = new BotClient(`${BASE_WS}/ws`, 'not-a-valid-token');
  const badRec = record(bad, 'bad-token');
  bad.connect();
  const badFrame = await badRec.next(f => f.type === 'error' || f.type === 'session_created',
    'error AUTH_FAILED for a bad ?token=', { allowDisconnect: true });
  assert.equal(badFrame.type, 'error', `expected an error frame for a bad token, got ${JSON.stringify(badFrame)}`);
  assert.equal(badFrame.code, 'AUTH_FAILED', `expected code AUTH_FAILED, got ${JSON.stringify(badFrame)}`);
  assert.equal(typeof badFrame.message, 'string', 'error.message must be a string');

  // The class auto-reconnects 3 s after any close (seed 001:150-155), so the script exits
  // explicitly instead of waiting for the event loop to drain.
  console.log('PASS general_bots');
  process.exit(0);
}

setTimeout(() => fail(`the whole script took longer than ${TOTAL_TIMEOUT_MS} ms`), TOTAL_TIMEOUT_MS);
process.on('uncaughtException', e => fail(`uncaught exception: ${e && e.stack || e}`));
main().catch(e => fail(e && e.message || String(e)));
