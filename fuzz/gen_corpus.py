#!/usr/bin/env python3
"""Writes the seed corpora of every fuzz target (fuzz_targets/*.rs documents each
target's input layout; segment_recovery follows docs/storage-format.md).

Run from fuzz/: python3 gen_corpus.py."""
import json, struct, zlib, os

def header(seg_id, prev):
    b = bytearray(40)
    b[0:8] = b"TPSEGMNT"
    b[8:10] = struct.pack("<H", 1)
    b[10:12] = struct.pack("<H", 40)
    b[16:24] = struct.pack("<Q", seg_id)
    b[24:32] = struct.pack("<Q", prev)
    b[36:40] = struct.pack("<I", zlib.crc32(bytes(b[0:36])))
    return bytes(b)

def frame(lsn, synced, payload):
    h = bytearray(32)
    h[4:6] = struct.pack("<H", 0x5442)
    h[6] = 1
    h[7] = 1
    h[8:12] = struct.pack("<I", len(payload))
    h[12:16] = struct.pack("<I", zlib.crc32(payload))
    h[16:24] = struct.pack("<Q", lsn)
    h[24:32] = struct.pack("<Q", synced)
    h[0:4] = struct.pack("<I", zlib.crc32(bytes(h[4:32])))
    pad = (-len(payload)) % 8
    return bytes(h) + payload + b"\0" * pad

frames = [frame(i, i - 1, b"batch %d " % i * (i % 4)) for i in range(1, 7)]
body = b"".join(frames)
mid = frames[2]
corrupt_mid = frames[0] + frames[1] + mid[:40] + bytes([mid[40] ^ 1]) + mid[41:] + frames[3] + frames[4]
seeds = {
    "empty": b"\x00",
    "header_only": b"\x01",
    "frames": b"\x01" + body,
    "torn_tail": b"\x01" + body[:-13],
    "zero_tail": b"\x01" + body + b"\0" * 64,
    "corrupt_mid_witnessed": b"\x01" + corrupt_mid,
    "raw_with_header": b"\x00" + header(1, 0) + body,
    "two_segments": bytes([0x03 | (2 << 2)]) + body,
    "big_len": b"\x01" + frames[0] + b"\xff" * 40,
}


def write(target, seeds):
    os.makedirs(os.path.join("corpus", target), exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join("corpus", target, name), "wb") as f:
            f.write(data)
    print(target, len(seeds), "seeds")


write("segment_recovery", seeds)

# ----- http_request: a split byte (its share of the stream), then the stream -----

def req(method, target, headers=(), body=b""):
    head = "%s %s HTTP/1.1\r\n" % (method, target)
    for k, v in headers:
        head += "%s: %s\r\n" % (k, v)
    return head.encode() + b"\r\n" + body

def chunked(*parts, trailers=b""):
    out = b""
    for p in parts:
        out += b"%x\r\n" % len(p) + p + b"\r\n"
    return out + b"0\r\n" + trailers + b"\r\n"

insert = req("POST", "/api/insert/users", [("Host", "db"), ("Content-Type", "application/json"),
             ("Content-Length", "13")], b'{"name":"al"}')
write("http_request", {
    "get": b"\x80" + req("GET", "/api/health", [("Host", "db")]),
    "pipelined": b"\x40" + insert + req("GET", "/api/find/users/1?x=1") + b"\r\n" + req("HEAD", "/a"),
    "chunked": b"\x90" + req("POST", "/api/insert/c", [("Transfer-Encoding", "chunked")])
        + chunked(b'{"a":', b'1}', trailers=b"X-T: 1\r\n"),
    "chunk_ext": b"\x20" + req("PUT", "/x", [("Transfer-Encoding", "chunked")])
        + b"3;ext=1\r\nabc\r\n0\r\n\r\n",
    "expect_continue": b"\xc0" + req("POST", "/api/kv/set/k", [("Expect", "100-continue"),
        ("Content-Length", "11")], b'{"value":1}'),
    "absolute_form": b"\x10" + req("GET", "http://db:8080/api/health?verbose", [("Connection", "close")]),
    "http10": b"\x00" + b"GET / HTTP/1.0\r\n\r\n",
    "too_big": b"\x60" + req("POST", "/x", [("Content-Length", "999")], b"x" * 40),
    "cl_te": b"\x50" + req("POST", "/x", [("Content-Length", "3"), ("Transfer-Encoding", "chunked")], b"abc"),
    "dup_cl": b"\x70" + req("POST", "/x", [("Content-Length", "2"), ("content-length", "2")], b"{}"),
    "garbage": b"\x30" + b"\x00\x01 garbage\r\n\r\n",
})

# ----- ws_frames: a limit byte (2^(b % 16)), a piece-size seed, then client frames -----

def frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04", rsv=0):
    out = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    if n < 126:
        out += bytes([0x80 | n])
    elif n < 65536:
        out += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        out += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return out + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

def msg(v):
    return json.dumps(v, separators=(",", ":")).encode()

hello = msg({"type": "Hello", "payload": {"formats": ["json"]}})
write("ws_frames", {
    "text": b"\x0a\x05" + frame(1, hello),
    "binary": b"\x0a\x21" + frame(2, bytes([0x81, 0xa1, 0x61, 0x01])),
    "fragmented": b"\x0c\x33" + frame(1, b"ab", fin=False) + frame(9, b"p") + frame(0, b"cd"),
    "ping_close": b"\x0a\x07" + frame(9, b"hi") + frame(8, struct.pack(">H", 1000) + b"bye"),
    "too_big": b"\x04\x09" + frame(1, b"a" * 40),
    "medium": b"\x0f\x11" + frame(2, bytes(range(256)) * 2),
    "unmasked": b"\x0a\x01" + b"\x81\x02hi",
    "bad_utf8": b"\x0a\x02" + frame(1, b"\xff\xfe"),
    "after_close": b"\x0a\x03" + frame(8, b"") + frame(1, b"late"),
    "rsv_bit": b"\x0a\x04" + frame(1, b"x", rsv=0x40),
})

# ----- sse_decoder: raw streams (a split byte first) that double as arbitrary input -----

write("sse_decoder", {
    "events": b"\x40id: 7:1\nevent: mutation\ndata: {\"a\":1}\n\n: keepalive\n\nevent: heartbeat\ndata: {}\n\n",
    "multiline": b"\x80data: a\ndata: b\n\nevent:x\n\n",
    "comments": b"\x10: hi\n\n:\n\nretry: 10\n\n",
    "crlf": b"\x20event: x\r\ndata: y\r\n\r\n\n\n",
    "no_space": b"\x90id:1\nevent:reset\ndata:{}\n\n",
    "partial": b"\xf0event: subscribed\ndata: {\"collection\":\"c\"",
    "unicode": "\x05id: \u00e9\nevent: \u2603\ndata: \u65e5\u672c\n\n".encode(),
})

# ----- msgpack_body: MessagePack bodies (rmp-serde named maps, as clients send) -----

def mp(v):
    """A tiny MessagePack encoder (ints, strings, bools, null, floats, lists, maps)."""
    if v is None: return b"\xc0"
    if v is True: return b"\xc3"
    if v is False: return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128: return bytes([v])
        if -32 <= v < 0: return struct.pack("b", v)
        if 0 <= v < 2**16: return b"\xcd" + struct.pack(">H", v)
        if 0 <= v < 2**64: return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float): return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        return (bytes([0xa0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b
    if isinstance(v, bytes): return b"\xc4" + bytes([len(v)]) + v
    if isinstance(v, list): return bytes([0x90 | len(v)]) + b"".join(mp(x) for x in v)
    if isinstance(v, dict):
        return bytes([0x80 | len(v)]) + b"".join(mp(k) + mp(x) for k, x in v.items())
    raise TypeError(v)

write("msgpack_body", {
    "record": mp({"name": "Alice", "age": 30, "tags": ["x", "y"], "score": 9.5, "ok": True, "n": None}),
    "nested": mp({"a": {"b": {"c": [1, [2, [3]]]}}, "neg": -5, "big": 2**40, "min": -2**40}),
    "bin": mp({"blob": b"\x01\x02\x03"}),
    "timestamp32": b"\x81\xa2at\xd6\xff" + struct.pack(">I", 1_700_000_000),
    "timestamp96": b"\xc7\x0c\xff" + struct.pack(">Iq", 5000, -1),
    "f32": b"\x92\xca" + struct.pack(">f", 1.5) + b"\xcc\xc8",
    "int_keys": b"\x82\x01\xa1a\xd0\x80\xc0",
    "wide": b"\xde\x00\x01\xda\x00\x01k\xdc\x00\x02\xd1\xff\x00\xd2\x00\x01\x00\x00",
    "trailing": mp({"a": 1}) + b"\xc0",
})

# ----- filter: filter expressions as JSON -----

def cond(field, op, value):
    return {"type": "Condition", "content": {"field": field, "operator": op, "value": value}}

write("filter", {name: msg(v) for name, v in {
    "eq": cond("age", "Eq", 30),
    "typed": cond("age", "Equals", {"type": "Integer", "value": 30}),
    "date": cond("when", "Gt", "2026-01-01T23:00:00-02:00"),
    "in": cond("name", "In", ["Bob", "Alice", 3, None]),
    "contains": cond("tags", "Contains", "y"),
    "path": cond("meta.owner.n", "Lte", 1.5),
    "logical": {"type": "Logical", "content": {"operator": "And", "expressions": [
        cond("age", "Gte", 28), {"type": "Logical", "content": {"operator": "Not",
        "expressions": [cond("name", "StartsWith", "B")]}}]}},
    "flat": {"or": [{"field": "price", "operator": "Lt", "value": 1},
                    {"not": {"field": "id", "operator": "Ne", "value": "r1"}}]},
    "vector": cond("embedding", "Contains", 0.5),
    "duration": cond("ttl_like", "Eq", {"type": "Duration", "value": {"secs": 5400, "nanos": 0}}),
}.items()})

# ----- connection: a chunk-size seed (0: one chunk), then what the client sends -----
# `TOKEN` is replaced by a valid bearer token by the harness.

auth = [("Authorization", "Bearer TOKEN")]
def jreq(method, target, body=None, headers=()):
    b = msg(body) if body is not None else b""
    h = [("Host", "db")] + list(headers) + auth
    if body is not None:
        h += [("Content-Type", "application/json"), ("Content-Length", str(len(b)))]
    return req(method, target, h, b)

upgrade = req("GET", "/api/ws?token=TOKEN", [("Host", "db"), ("Upgrade", "websocket"),
    ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
def ws(*messages):
    return b"".join(frame(1, msg(m)) for m in messages)

write("connection", {
    "health": b"\x00" + req("GET", "/api/health", [("Host", "db")]),
    "token": b"\x00" + req("POST", "/api/auth/token", [("Content-Length", "15")], b'{"api_key":"k"}'),
    "crud": b"\x00" + jreq("POST", "/api/insert/users", {"id": "u1", "name": "Al", "age": 30})
        + jreq("POST", "/api/find/users", {"filter": cond("age", "Gte", 18), "limit": 10})
        + jreq("PUT", "/api/update/users/u1", {"age": 31})
        + jreq("GET", "/api/find/users/u1") + req("HEAD", "/api/health")
        + jreq("DELETE", "/api/delete/users/u1", headers=[("Connection", "close")]),
    "crud_chunks": b"\x07" + jreq("POST", "/api/batch/insert/c", [{"a": 1}, {"a": 2}])
        + jreq("POST", "/api/distinct/c/a", {}) + jreq("GET", "/api/collections"),
    "kv_txn": b"\x00" + jreq("POST", "/api/kv/set/k1", {"value": {"x": 1}, "ttl": "1h"})
        + jreq("GET", "/api/kv/get/k1") + jreq("POST", "/api/transactions", {})
        + jreq("POST", "/api/search/c", {"query": "al"}),
    "chunked_continue": b"\x00" + req("POST", "/api/insert/c", [("Expect", "100-continue"),
        ("Transfer-Encoding", "chunked"), ("Authorization", "Bearer TOKEN")])
        + chunked(b'{"a":', b'"b"}'),
    "msgpack": b"\x00" + req("POST", "/api/insert/c", [("Content-Type", "application/msgpack"),
        ("Accept", "application/msgpack"), ("Content-Length", "4"), ("Authorization", "Bearer TOKEN")],
        mp({"a": 1})),
    "transfer": b"\x00" + jreq("POST", "/api/insert/c", {"id": "r1", "a": 1})
        + jreq("GET", "/api/export/c")
        + req("POST", "/api/import/d", [("Host", "db"), ("Content-Type", "application/x-ndjson"),
            ("Content-Length", "25")] + auth, b'{"a": 1}\n\n{"b": "x"}\n[1]\n')
        + req("POST", "/api/import/e?partial=true", [("Host", "db"), ("Content-Type", "text/csv"),
            ("Content-Length", "27")] + auth, b'id,n,ok\nx1,3,true\nx2,"a,b"\n')
        + jreq("GET", "/metrics", headers=[("X-Request-Id", "f-1")]),
    "unauthorized": b"\x00" + req("GET", "/api/collections") + req("GET", "/api/nope"),
    "malformed": b"\x00" + b"GET /\x01 HTTP/1.1\r\n\r\n",
    "websocket": b"\x00" + upgrade + ws(
        {"type": "Hello", "messageId": "1", "payload": {"formats": ["json"]}},
        {"type": "Subscribe", "messageId": "2", "payload": {"collection": "c"}},
        {"type": "Insert", "messageId": "3", "payload": {"collection": "c", "record": {"a": 1}}},
        {"type": "FindAll", "messageId": "4", "payload": {"collection": "c"}})
        + frame(9, b"p") + frame(8, struct.pack(">H", 1000)),
    "websocket_msgpack": b"\x05" + upgrade + ws({"type": "Hello", "payload": {"formats": ["msgpack"]}})
        + frame(2, mp({"type": "Insert", "messageId": "9", "payload": {"collection": "c", "record": {"n": 2}}}))
        + frame(2, mp({"type": "Subscribe", "payload": {"collection": "c", "resume_from": "1"}})),
    # Storage lags (control bit 0x80) and the bytes arrive in `<CUT>` chunks.
    "lagging_pipeline": b"\x80" + jreq("POST", "/api/insert/c", {"a": 1}) + b"<CUT>"
        + jreq("POST", "/api/find/c", {}) + b"<CUT>" + jreq("GET", "/api/kv/get/nope"),
    "lagging_ws_error": b"\x80" + upgrade + ws(
        {"type": "Subscribe", "messageId": "1", "payload": {"collection": "c"}},
        {"type": "Insert", "messageId": "2", "payload": {"collection": "c", "record": {"a": 1}}})
        + b"<CUT>" + b"\x81\x02hi"
        + ws({"type": "Insert", "messageId": "3", "payload": {"collection": "c", "record": {"after": "error"}}}),
    # Wake-ups every round (control bit 0x40), as other clients' writes cause.
    "wakeups_ws_error": b"\x40" + upgrade + ws(
        {"type": "Subscribe", "messageId": "1", "payload": {"collection": "c"}})
        + b"<CUT>" + b"\x81\x02hi"
        + ws({"type": "Insert", "messageId": "2", "payload": {"collection": "c", "record": {"after": "error"}}}),
    # Storage fails (control bit 0x20) when the second chunk arrives.
    "failing_write": b"\xa0" + jreq("POST", "/api/insert/c", {"a": 1}) + b"<CUT>" + b"\r\n",
    "failing_ws": b"\xa0" + upgrade + ws(
        {"type": "Insert", "messageId": "0", "payload": {"collection": "c", "record": {"a": 0}}})
        + b"<CUT>" + frame(9, b"still there?"),
    "lagging_sse": b"\x80" + jreq("POST", "/api/insert/c", {"a": 1}) + b"<CUT>"
        + req("GET", "/api/subscribe/c?token=TOKEN", [("Last-Event-ID", "1")]) + b"<CUT>"
        + b"stray bytes",
    "sse": b"\x00" + jreq("POST", "/api/insert/c", {"a": 1})
        + req("GET", "/api/subscribe/c?token=TOKEN&filter_field=a&filter_value=1", [("Last-Event-ID", "1:0")]),
    # An embedding by model name is an outbound call (it fails: no network),
    # with a request pipelined behind it.
    "embed_call": b"\x00" + jreq("POST", "/api/embed", {"texts": ["a", "b"], "model": "m"})
        + jreq("GET", "/api/health"),
    # Chat with the offline provider: a session, a raw completion whole and
    # streamed, models and tools.
    "chat": b"\x00" + jreq("POST", "/api/chat", {"collections": [{"collection_name": "c", "fields": ["a"]}]})
        + jreq("POST", "/api/insert/c", {"a": "price list"})
        + jreq("POST", "/api/chat/complete", {"system_prompt": "s", "message": "what is the price?"})
        + jreq("GET", "/api/chat_models") + jreq("GET", "/api/chat/tools") + jreq("GET", "/api/chat?limit=1"),
    "chat_stream": b"\x00" + jreq("POST", "/api/chat/complete/stream", {"message": "hello there"}),
})

# ----- http_response: a control byte (piece sizes), then a provider's response -----
def resp(status, headers, body):
    head = "HTTP/1.1 %d X\r\n" % status + "".join("%s: %s\r\n" % h for h in headers) + "\r\n"
    return head.encode() + body

write("http_response", {
    "length": b"\x07" + resp(200, [("Content-Length", "2")], b"{}"),
    "chunked": b"\x03" + resp(200, [("Transfer-Encoding", "chunked")],
        b"2\r\n{\"\r\n3;x=1\r\na\":\r\n1\r\n1\r\n0\r\nT: v\r\n\r\n"),
    "until_close": b"\x01" + resp(500, [], b"boom"),
    "continue_then_204": b"\x09" + b"HTTP/1.1 100 Continue\r\n\r\n" + resp(204, [], b""),
    "sse_stream": b"\x05" + resp(200, [("Content-Type", "text/event-stream"), ("Transfer-Encoding", "chunked")],
        b"10\r\ndata: {\"a\": 1}\n\n\r\n6\r\ndata: \r\n8\r\n[DONE]\n\n\r\n0\r\n\r\n"),
    "truncated": b"\x02" + resp(200, [("Content-Length", "10")], b"abc"),
    "bad_chunk": b"\x02" + resp(200, [("Transfer-Encoding", "chunked")], b"zz\r\nabc"),
})


# ----- provider_stream: a control byte (bit 0: 0 OpenAI, 1 Anthropic), then a streamed body -----
def oa(*chunks):
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"

def an(*events):
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events)

write("provider_stream", {
    "openai_text": b"\x00" + oa({"choices": [{"delta": {"content": "Hel"}}]}, {"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
    "openai_tool": b"\x06" + oa({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "count_records", "arguments": "{\"coll"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "ection\": \"p\"}"}}]}}]},
        {"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
    "openai_error": b"\x02" + b"data: " + json.dumps({"error": {"message": "Rate limit", "code": "rate_limit_exceeded"}}).encode() + b"\n\n",
    "openai_crlf": b"\x04" + oa({"choices": [{"delta": {"content": "x"}}]}).replace(b"\n", b"\r\n"),
    "anthropic_text": b"\x01" + an({"type": "message_start", "message": {"usage": {"input_tokens": 5}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
        {"type": "message_stop"}),
    "anthropic_tool": b"\x03" + an({"type": "message_start", "message": {"usage": {"input_tokens": 5}}},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}},
        {"type": "message_stop"}),
    "anthropic_error": b"\x05" + an({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
})

# ----- dialect_frames: a dialect byte (0 GB token, 1 GB auth frame, 2 meet, 3 Fluxbase, 4 EVA,
# 5 Lanonasis HTTP), the harness control byte, then messages separated by 0xFF -----
def msgs(*values):
    return b"\xff".join(v if isinstance(v, bytes) else json.dumps(v).encode() for v in values)

write("dialect_frames", {
    "general_bots": b"\x00\x00" + msgs({"type": "ping"}, {"type": "message", "session_id": "nope", "content": "hi"},
        {"type": "typing_start", "session_id": "x"}, {"type": "subscribe", "session_id": "x"}, b"{not json", {"type": "??"}),
    "general_bots_auth": b"\x01\x00" + msgs({"type": "ping"}, {"type": "auth", "token": "TOKEN"}, {"type": "unsubscribe", "session_id": "x"}),
    "meet": b"\x02\x00" + msgs({"type": "join", "room_id": "r", "participant_name": "a"},
        {"type": "signal", "room_id": "r", "target_id": "p_x", "signal": {"sdp": "v=0"}}, {"type": "leave", "room_id": "r"}),
    "fluxbase": b"\x03\x00" + msgs({"type": "start_chat", "chatbot": "sql-assistant", "namespace": "default"},
        {"type": "message", "conversation_id": "c", "content": "How many products?"}, {"type": "cancel", "conversation_id": "c"},
        {"type": "start_chat", "chatbot": "nope"}, b"[]"),
    "eva": b"\x04\x00" + msgs({"type": "start_conversation", "conversation_id": None}, {"type": "user_message", "content": "Hello!"},
        {"type": "start_conversation", "conversation_id": "unknown"}, {"type": "user_message", "content": "x" * 5000}, {"type": "ping"}),
    "lanonasis": b"\x05\x00" + msgs({"title": "t", "content": "c", "tags": ["a"], "metadata": {"k": "v"}},
        {"tags": ["b"]}, {"query": "c", "limit": 3}, b"page=1&limit=2&sort=title", b""),
    "lanonasis_stream": b"\x05\x00" + msgs(b"events=memory.created,search.performed&filters[k]=v&heartbeat=1"),
})

# ----- function_definition: {"definition", "params", "seed"} as JSON -----

def fn_input(functions, params=None, seed=None, **extra):
    d = {"label": "f", "name": "f", "functions": functions}
    d.update(extra)
    return msg({"definition": d, "params": params or {}, "seed": seed or []})

write("function_definition", {
    "query_project": fn_input([
        {"type": "Query", "collection": "seed", "filter": cond("n", "Gte", "{{min}}"),
         "sort": [{"field": "n", "ascending": False}], "limit": "{{lim}}"},
        {"type": "Project", "fields": ["n"], "exclude": False}],
        {"min": 1, "lim": 2}, [{"n": 1}, {"n": 2}, {"n": 3}]),
    "if_foreach": fn_input([
        {"type": "FindAll", "collection": "seed"},
        {"type": "If", "condition": {"type": "Not", "value": {"condition": {"type": "HasRecords"}}},
         "then_functions": [{"type": "SetField", "field": "empty", "value": True}],
         "else_functions": [{"type": "ForEach", "functions": [
             {"type": "Insert", "collection": "out", "record": {"copy": "{{n}}", "s": "x-{{n}}"}}]}]}],
        {}, [{"n": 1}, {"n": 2}]),
    "recursion": fn_input([{"type": "CallFunction", "function_label": "f", "params": None}]),
    "group_count": fn_input([
        {"type": "FindAll", "collection": "seed"},
        {"type": "Group", "by_fields": ["k"], "functions": [
            {"output_field": "s", "operation": "sum", "input_field": "n"}]},
        {"type": "Count", "output_field": "c"}], {}, [{"k": "a", "n": 1}, {"k": "a", "n": 2}]),
    "http_try": fn_input([
        {"type": "TryCatch", "try_functions": [
            {"type": "HttpRequest", "url": "https://example.com/{{id}}", "method": "POST",
             "body": {"id": {"type": "Parameter", "name": "id"}}}],
         "catch_functions": [{"type": "SetField", "field": "err", "value": "{{e}}"}],
         "output_error_field": "e"},
        {"type": "Return", "fields": {"r": "{{http_response.n}}"}, "status_code": 201}], {"id": 7}),
    "kv_crypto": fn_input([
        {"type": "KvSet", "key": "k:{{id}}", "value": "{{id}}", "ttl": "1h"},
        {"type": "KvGet", "key": "k:{{id}}"},
        {"type": "HmacSign", "input": "{{value}}", "secret": "s", "output_field": "m"},
        {"type": "JwtSign", "claims": {"sub": "{{m}}"}, "secret": "s", "output_field": "t"},
        {"type": "JwtVerify", "token_field": "t", "secret": "s", "output_field": "c"},
        {"type": "RateLimit", "key": "r", "limit": 1, "window_secs": 1, "on_exceed": "skip", "output_field": "rl"},
        {"type": "Sleep", "duration_ms": 5}], {"id": "a"}),
    "transaction": fn_input([
        {"type": "Insert", "collection": "t", "record": {"a": 1}},
        {"type": "CreateSavepoint", "name": "s"},
        {"type": "DeleteById", "collection": "t", "record_id": "nope"},
        {"type": "RollbackToSavepoint", "name": "s"}],
        transaction_config={"enabled": True, "auto_rollback": True}),
    "bad_stage": msg({"definition": {"label": "f", "name": "f", "functions": [{"type": "Nope"}]}}),
})


# ----- text_index: flags, then opcodes (fuzz_targets/text_index.rs) -----

def upsert(doc, *fields):
    out = bytes([0, doc, len(fields)])
    for name, text in fields:
        t = text.encode()
        out += bytes([name, len(t)]) + t
    return out

def search(text, options=0, distance=1, limit=10):
    t = text.encode()
    return bytes([3, len(t)]) + t + bytes([options, distance, limit])

churn = b"".join(upsert(d % 5, (0, "running rust runs %d" % r), (1, "Caf\u00e9 db%d" % d))
                 for r in range(4) for d in range(5))
write("text_index", {
    "empty": b"\x00",
    "upsert_search": b"\x02" + upsert(1, (0, "Rust engines")) + search("engine", 1 | 2),
    "churn_slow_sweep": b"\x03" + churn + bytes([2, 3]) + search("run", 16 | 2) + search("rust", 4),
    "churn_normal": b"\x02" + churn + search("runing", 1, 2) + search("db", 2 | 16 | 128),
    "bad_distance": b"\x00" + upsert(0, (2, "x")) + search("x", 1, 3),
})
