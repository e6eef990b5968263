//! One table row per stage type (spec G2): records seeded into a fresh
//! engine, a definition and its parameters in; the run's records (or its
//! error) and the stored state out. Runs step through `Run::poll` exactly
//! as the server drives them; `HttpRequest`/`SWR` effects are answered with
//! a canned response and `Sleep` with its timer, and the test counts them;
//! bcrypt (`Compute`) runs as a reader thread would run it.
//!
//! Expected values are compared after unwrapping typed envelopes
//! (`{"type": "String", "value": "x"}` → `"x"`) and dropping record ids.
//! A string starting with `~` is a pattern: `~uuid`, `~hex:N` (N hex
//! digits), `~rfc3339`, `~jwt`, `~bcrypt4`, `~num`, `~str`, `~any`.

use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tidepool_core::config::Config;
use tidepool_core::engine::query::FindQuery;
use tidepool_core::engine::Engine;
use tidepool_core::functions::definition::{self, Definition};
use tidepool_core::functions::interp::{Library, World};
use tidepool_core::functions::{Budget, Effect, Embedder, Poll, Resume, Run};
use tidepool_core::time::Timestamp;

/// 2026-01-01T00:00:00Z.
const T0: Timestamp = Timestamp::from_secs(1_767_225_600);

struct Lib(HashMap<String, Arc<Definition>>);

impl Library for Lib {
    fn function(&mut self, _: &Engine, id_or_label: &str) -> Option<Arc<Definition>> {
        self.0.get(id_or_label).cloned()
    }
}

#[derive(Default)]
struct Case {
    name: &'static str,
    /// `{collection: [record, ...]}` inserted before the run.
    seed: Value,
    /// Other functions `CallFunction` may reach: `[definition, ...]`.
    library: Value,
    params: Value,
    /// The definition's `functions`, or a whole definition (an object).
    stages: Value,
    /// Expected records (compared as a multiset unless `ordered`).
    out: Value,
    ordered: bool,
    /// Expected error: (HTTP status, words the message contains).
    err: Option<(u16, &'static str)>,
    /// Expected stored state: `{collection: [record, ...]}`.
    state: Value,
    /// The body an `HttpRequest`/`SWR` effect gets back (status 200).
    http: Value,
    /// Effects the run must have asked for: (http, sleeps).
    effects: (usize, usize),
    /// The run's clock (T0 unless set).
    now: Option<Timestamp>,
    /// An embedding provider's base URL (the offline embedder otherwise).
    embed_url: Option<&'static str>,
    /// An OpenAI-compatible chat provider's base URL (offline otherwise).
    chat_url: Option<&'static str>,
    /// The effect's body as raw bytes (a provider's SSE stream), not `http`.
    http_raw: Option<&'static str>,
    /// Text the outbound request must hold (method, URL, headers, body).
    http_sent: Vec<&'static str>,
}

/// Typed envelopes unwrapped, record ids dropped (at the top level).
fn plain(v: &Value) -> Value {
    match v {
        Value::Object(o) if o.len() == 2 && o.contains_key("type") && o.contains_key("value") => {
            plain(&o["value"])
        }
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), plain(v))).collect()),
        Value::Array(a) => Value::Array(a.iter().map(plain).collect()),
        other => other.clone(),
    }
}

fn record(v: &Value) -> Value {
    let mut r = plain(v);
    if let Value::Object(o) = &mut r {
        o.remove("id");
    }
    r
}

fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(p), a) if p.starts_with('~') => {
            let s = a.as_str().unwrap_or("");
            let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
            match p.as_str() {
                "~any" => true,
                "~num" => a.is_number(),
                "~str" => a.is_string(),
                "~uuid" => {
                    s.len() == 36
                        && s.as_bytes()[14] == b'4'
                        && s.split('-').map(str::len).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
                }
                "~rfc3339" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
                "~jwt" => s.split('.').count() == 3,
                // A bcrypt hash at cost 4: `$2b$04$` and 53 characters of
                // salt and hash.
                "~bcrypt4" => s.len() == 60 && s.starts_with("$2b$04$"),
                p if p.starts_with("~vec:") => a.as_array().is_some_and(|v| {
                    v.len() == p[5..].parse::<usize>().unwrap() && v.iter().all(Value::is_number)
                }),
                p if p.starts_with("~hex:") => {
                    s.len() == p[5..].parse::<usize>().unwrap() && hex(s)
                }
                _ => panic!("unknown pattern {p}"),
            }
        }
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av)))
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| matches(e, a))
        }
        (Value::Number(e), Value::Number(a)) => e.as_f64() == a.as_f64(),
        (e, a) => e == a,
    }
}

/// Multiset comparison: every expected record matches a distinct actual one.
fn same_records(expected: &Value, actual: &[Value], ordered: bool) -> bool {
    let e = expected.as_array().expect("expected records are an array");
    if e.len() != actual.len() {
        return false;
    }
    if ordered {
        return e.iter().zip(actual).all(|(e, a)| matches(e, a));
    }
    let mut used = vec![false; actual.len()];
    e.iter().all(|e| {
        let hit = actual
            .iter()
            .enumerate()
            .find(|(i, a)| !used[*i] && matches(e, a));
        hit.map(|(i, _)| used[i] = true).is_some()
    })
}

fn definition(label: &str, stages: &Value) -> Definition {
    let mut body = match stages {
        Value::Object(o) => Value::Object(o.clone()),
        _ => json!({"functions": stages}),
    };
    if body.get("label").is_none() {
        body["label"] = json!(label);
    }
    body["name"] = json!(label);
    definition::parse(&body).unwrap_or_else(|e| panic!("{label}: {}", e.message))
}

fn stored(engine: &mut Engine, collection: &str, now: Timestamp) -> Vec<Value> {
    let q = FindQuery::parse(&Value::Null).unwrap();
    match engine.find(collection, &q, now) {
        Ok(rows) => rows
            .into_iter()
            .map(|r| {
                let v = serde_json::to_value(tidepool_core::engine::record::RecordOut::new(
                    r.found.pk,
                    r.found.id,
                    r.found.record,
                ))
                .unwrap();
                record(&v)
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn check(case: &Case) {
    let now = case.now.unwrap_or(T0);
    let mut engine = Engine::new(7);
    if let Value::Object(seed) = &case.seed {
        for (collection, records) in seed {
            for r in records.as_array().unwrap() {
                engine.insert(collection, r.clone(), now).unwrap();
            }
        }
    }
    let mut lib = Lib(HashMap::new());
    for d in case.library.as_array().into_iter().flatten() {
        let def = definition("callee", d);
        lib.0.insert(def.label.clone(), Arc::new(def));
    }
    let def = definition(case.name, &case.stages);
    let params = match &case.params {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    let mut counter = 0u8;
    let mut random = |out: &mut [u8]| {
        for b in out {
            counter = counter.wrapping_add(37);
            *b = counter;
        }
    };
    let embedder = Embedder {
        url: case.embed_url.unwrap_or("").to_string(),
        model: "text-embedding-3-small".into(),
        ..Embedder::default()
    };
    let result = match Run::new(&def, params, Arc::default(), Budget::default(), now) {
        Err(e) => Err(e),
        Ok(run) => {
            let mut run = run.with_embedder(Arc::new(embedder));
            if let Some(url) = case.chat_url {
                let config = Config {
                    openai_url: url.into(),
                    openai_api_key: "sk-test".into(),
                    openai_model: "gpt-test".into(),
                    ..Config::default()
                };
                run = run.with_chat(Arc::new(config));
            }
            let (mut http, mut sleeps) = (0, 0);
            let mut answer: Option<Resume> = None;
            loop {
                let mut world = World {
                    engine: &mut engine,
                    library: &mut lib,
                    now,
                    random: &mut random,
                };
                let poll = match answer.take() {
                    None => run.poll(&mut world),
                    Some(a) => run.resume(a, &mut world),
                };
                match poll {
                    Poll::Done(r) => break r.map(|f| (f, http, sleeps)),
                    Poll::Wait(Effect::Http(call)) => {
                        assert!(call.url.starts_with("http"), "{}: {call:?}", case.name);
                        let sent = format!(
                            "{} {} {:?} {}",
                            call.method,
                            call.url,
                            call.headers,
                            String::from_utf8_lossy(call.body.as_deref().unwrap_or_default())
                        );
                        for want in &case.http_sent {
                            assert!(sent.contains(want), "{}: `{want}` not in {sent}", case.name);
                        }
                        http += 1;
                        let body = match case.http_raw {
                            Some(raw) => raw.as_bytes().to_vec(),
                            None => case.http.to_string().into_bytes(),
                        };
                        answer = Some(Resume::Http(Ok((200, body))));
                    }
                    Poll::Wait(Effect::Sleep(_)) => {
                        sleeps += 1;
                        answer = Some(Resume::Slept);
                    }
                    // Run as a reader thread would.
                    Poll::Wait(Effect::Compute(job)) => {
                        answer = Some(Resume::Computed(job.run()));
                    }
                }
            }
        }
    };
    match (&case.err, result) {
        (Some((status, words)), Err(e)) => {
            assert_eq!(e.status(), *status, "{}: {}", case.name, e.message);
            assert!(
                e.message.contains(words),
                "{}: `{}` does not mention `{words}`",
                case.name,
                e.message
            );
        }
        (Some(_), Ok((f, ..))) => panic!("{}: expected an error, got {:?}", case.name, f.records),
        (None, Err(e)) => panic!("{}: {}", case.name, e.message),
        (None, Ok((f, http, sleeps))) => {
            let got: Vec<Value> = f
                .records
                .iter()
                .map(|r| record(&Value::Object(r.clone())))
                .collect();
            assert!(
                same_records(&case.out, &got, case.ordered),
                "{}: expected {}\n got {}",
                case.name,
                case.out,
                Value::Array(got.clone())
            );
            assert_eq!((http, sleeps), case.effects, "{}: effects", case.name);
        }
    }
    if let Value::Object(state) = &case.state {
        for (collection, expected) in state {
            let got = stored(&mut engine, collection, now);
            assert!(
                same_records(expected, &got, false),
                "{}: {collection} holds {}",
                case.name,
                Value::Array(got.clone())
            );
        }
    }
}

fn users() -> Value {
    json!({"users": [
        {"id": "u1", "name": "ann", "role": "admin", "age": 40},
        {"id": "u2", "name": "bob", "role": "user", "age": 30},
        {"id": "u3", "name": "cid", "role": "user", "age": 20},
    ]})
}

fn eq(field: &str, value: Value) -> Value {
    json!({"type": "Condition", "content": {"field": field, "operator": "Eq", "value": value}})
}

#[test]
fn reads() {
    for case in [
        Case {
            name: "FindAll",
            seed: users(),
            stages: json!([{"type": "FindAll", "collection": "users"}]),
            out: json!([
                {"name": "ann", "role": "admin", "age": 40},
                {"name": "bob", "role": "user", "age": 30},
                {"name": "cid", "role": "user", "age": 20}
            ]),
            ..Case::default()
        },
        Case {
            name: "FindAll of a missing collection",
            stages: json!([{"type": "FindAll", "collection": "nothing"}]),
            out: json!([]),
            ..Case::default()
        },
        Case {
            name: "Query",
            seed: users(),
            params: json!({"role": "user", "n": 1, "skip": 0}),
            stages: json!([{"type": "Query", "collection": "users",
                "filter": eq("role", json!("{{role}}")),
                "sort": [{"field": "age", "ascending": true}],
                "limit": "{{n}}", "skip": "{{skip}}"}]),
            out: json!([{"name": "cid", "role": "user", "age": 20}]),
            ..Case::default()
        },
        Case {
            name: "FindById",
            seed: users(),
            params: json!({"id": "u2"}),
            stages: json!([{"type": "FindById", "collection": "users", "record_id": "{{id}}"}]),
            out: json!([{"name": "bob", "role": "user", "age": 30}]),
            ..Case::default()
        },
        Case {
            name: "FindById of a missing record",
            seed: users(),
            stages: json!([{"type": "FindById", "collection": "users", "record_id": "zz"}]),
            out: json!([]),
            ..Case::default()
        },
        Case {
            name: "FindOne",
            seed: users(),
            stages: json!([{"type": "FindOne", "collection": "users", "key": "name", "value": "cid"}]),
            out: json!([{"name": "cid", "role": "user", "age": 20}]),
            ..Case::default()
        },
        Case {
            name: "TextSearch",
            seed: json!({"docs": [{"title": "apple pie"}, {"title": "pear tart"}]}),
            stages: json!([{"type": "TextSearch", "collection": "docs", "query_text": "apple"}]),
            out: json!([{"title": "apple pie", "score": "~num"}]),
            ..Case::default()
        },
        Case {
            name: "HybridSearch",
            seed: json!({"docs": [{"title": "apple pie"}, {"title": "pear tart"}]}),
            stages: json!([{"type": "HybridSearch", "collection": "docs", "query_text": "tart"}]),
            out: json!([{"title": "pear tart", "score": "~num"}]),
            ..Case::default()
        },
        Case {
            name: "VectorSearch",
            seed: json!({"vecs": [
                {"name": "x", "embedding": [1.0, 0.0]},
                {"name": "y", "embedding": [0.0, 1.0]}]}),
            stages: json!([{"type": "VectorSearch", "collection": "vecs",
                "query_vector": [0.9, 0.1], "limit": 1}]),
            out: json!([{"name": "x", "embedding": [1.0, 0.0], "score": "~num"}]),
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn writes() {
    for case in [
        Case {
            name: "Insert",
            params: json!({"who": "dee"}),
            stages: json!([{"type": "Insert", "collection": "people",
                "record": {"name": "{{who}}", "tag": "user-{{who}}"}}]),
            out: json!([{"name": "dee", "tag": "user-dee"}]),
            state: json!({"people": [{"name": "dee", "tag": "user-dee"}]}),
            ..Case::default()
        },
        Case {
            name: "Insert with a typed parameter reference and a ttl",
            params: json!({"n": 5}),
            stages: json!([{"type": "Insert", "collection": "people",
                "record": {"n": {"type": "Parameter", "name": "n"}}, "ttl": "1h"}]),
            out: json!([{"n": 5, "ttl": "~rfc3339"}]),
            state: json!({"people": [{"n": 5, "ttl": "~rfc3339"}]}),
            ..Case::default()
        },
        Case {
            name: "BatchInsert",
            stages: json!([{"type": "BatchInsert", "collection": "people",
                "records": [{"name": "a"}, {"name": "b"}]}]),
            out: json!([{"name": "a"}, {"name": "b"}]),
            state: json!({"people": [{"name": "a"}, {"name": "b"}]}),
            ..Case::default()
        },
        Case {
            name: "Update",
            seed: users(),
            stages: json!([{"type": "Update", "collection": "users",
                "filter": eq("role", json!("user")), "updates": {"role": "member"}}]),
            out: json!([
                {"name": "bob", "role": "member", "age": 30},
                {"name": "cid", "role": "member", "age": 20}
            ]),
            state: json!({"users": [
                {"name": "ann", "role": "admin", "age": 40},
                {"name": "bob", "role": "member", "age": 30},
                {"name": "cid", "role": "member", "age": 20}
            ]}),
            ..Case::default()
        },
        Case {
            name: "UpdateById",
            seed: users(),
            stages: json!([{"type": "UpdateById", "collection": "users", "record_id": "u1",
                "updates": {"age": 41}}]),
            out: json!([{"name": "ann", "role": "admin", "age": 41}]),
            ..Case::default()
        },
        Case {
            name: "FindOneAndUpdate",
            seed: users(),
            stages: json!([{"type": "FindOneAndUpdate", "collection": "users", "record_id": "u3",
                "updates": {"name": "cyd"}}]),
            out: json!([{"name": "cyd", "role": "user", "age": 20}]),
            ..Case::default()
        },
        Case {
            name: "UpdateWithAction",
            seed: users(),
            stages: json!([{"type": "UpdateWithAction", "collection": "users", "record_id": "u2",
                "action": "increment", "field": "age", "value": 5}]),
            out: json!([{"name": "bob", "role": "user", "age": 35}]),
            ..Case::default()
        },
        Case {
            name: "Increment",
            seed: users(),
            stages: json!([{"type": "Increment", "collection": "users", "record_id": "u2",
                "field": "age"}]),
            out: json!([{"name": "bob", "role": "user", "age": 31}]),
            ..Case::default()
        },
        Case {
            name: "Push",
            seed: json!({"lists": [{"id": "l1", "items": [1]}]}),
            stages: json!([{"type": "Push", "collection": "lists", "record_id": "l1",
                "field": "items", "value": 2}]),
            out: json!([{"items": [1, 2]}]),
            ..Case::default()
        },
        Case {
            name: "Upsert inserts, then updates",
            stages: json!([
                {"type": "Upsert", "collection": "kv", "key": "k", "value": "a",
                 "record": {"k": "a", "v": 1}},
                {"type": "Upsert", "collection": "kv", "key": "k", "value": "a",
                 "record": {"v": 2}}
            ]),
            out: json!([{"k": "a", "v": 2}]),
            state: json!({"kv": [{"k": "a", "v": 2}]}),
            ..Case::default()
        },
        Case {
            name: "Delete",
            seed: users(),
            stages: json!([{"type": "Delete", "collection": "users",
                "filter": eq("role", json!("user"))}]),
            out: json!([]),
            state: json!({"users": [{"name": "ann", "role": "admin", "age": 40}]}),
            ..Case::default()
        },
        Case {
            name: "DeleteById",
            seed: users(),
            stages: json!([{"type": "DeleteById", "collection": "users", "record_id": "u1"}]),
            out: json!([]),
            state: json!({"users": [
                {"name": "bob", "role": "user", "age": 30},
                {"name": "cid", "role": "user", "age": 20}
            ]}),
            ..Case::default()
        },
        Case {
            name: "BatchDelete",
            seed: users(),
            stages: json!([{"type": "BatchDelete", "collection": "users",
                "record_ids": ["u1", "u2"]}]),
            out: json!([]),
            state: json!({"users": [{"name": "cid", "role": "user", "age": 20}]}),
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn transforms() {
    for case in [
        Case {
            name: "Project keeps",
            seed: users(),
            stages: json!([{"type": "FindAll", "collection": "users"},
                {"type": "Project", "fields": ["name"], "exclude": false}]),
            out: json!([{"name": "ann"}, {"name": "bob"}, {"name": "cid"}]),
            ..Case::default()
        },
        Case {
            name: "Project excludes",
            seed: users(),
            stages: json!([{"type": "FindById", "collection": "users", "record_id": "u1"},
                {"type": "Project", "fields": ["age", "role"], "exclude": true}]),
            out: json!([{"name": "ann"}]),
            ..Case::default()
        },
        Case {
            name: "Group",
            seed: users(),
            stages: json!([{"type": "FindAll", "collection": "users"},
                {"type": "Group", "by_fields": ["role"], "functions": [
                    {"output_field": "n", "operation": "Count"},
                    {"output_field": "total", "operation": "Sum", "input_field": "age"},
                    {"output_field": "mean", "operation": "Average", "input_field": "age"},
                    {"output_field": "youngest", "operation": "Min", "input_field": "age"},
                    {"output_field": "oldest", "operation": "Max", "input_field": "age"},
                    {"output_field": "names", "operation": "Push", "input_field": "name"}]}]),
            out: json!([
                {"role": "admin", "n": 1, "total": 40, "mean": 40.0, "youngest": 40,
                 "oldest": 40, "names": ["ann"]},
                {"role": "user", "n": 2, "total": 50, "mean": 25.0, "youngest": 20,
                 "oldest": 30, "names": ["bob", "cid"]}
            ]),
            ..Case::default()
        },
        Case {
            name: "Count",
            seed: users(),
            stages: json!([{"type": "FindAll", "collection": "users"},
                {"type": "Count", "output_field": "total"}]),
            out: json!([{"total": 3}]),
            ..Case::default()
        },
        Case {
            name: "SetField on an empty working set",
            params: json!({"x": [1, 2]}),
            stages: json!([{"type": "SetField", "field": "copy", "value": "{{x}}"}]),
            out: json!([{"copy": [1, 2]}]),
            ..Case::default()
        },
        Case {
            name: "AddFields",
            seed: users(),
            stages: json!([{"type": "FindById", "collection": "users", "record_id": "u3"},
                {"type": "AddFields", "fields": [
                    {"field_name": "tier", "expression": {"type": "Literal", "value": "gold"}}]}]),
            out: json!([{"name": "cid", "role": "user", "age": 20, "tier": "gold"}]),
            ..Case::default()
        },
        Case {
            name: "CurrentDatetime",
            stages: json!([{"type": "CurrentDatetime", "output_field": "at"}]),
            out: json!([{"at": "2026-01-01T00:00:00.000000Z"}]),
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn control_flow() {
    for case in [
        Case {
            name: "If takes then when there are records",
            seed: users(),
            stages: json!([{"type": "FindById", "collection": "users", "record_id": "u1"},
                {"type": "If", "condition": {"type": "HasRecords"},
                 "then_functions": [{"type": "SetField", "field": "hit", "value": true}],
                 "else_functions": [{"type": "SetField", "field": "hit", "value": false}]},
                {"type": "Project", "fields": ["hit"], "exclude": false}]),
            out: json!([{"hit": true}]),
            ..Case::default()
        },
        Case {
            name: "If takes else on a compound condition",
            seed: users(),
            stages: json!([{"type": "FindById", "collection": "users", "record_id": "u2"},
                {"type": "If", "condition": {"type": "And", "value": {"conditions": [
                    {"type": "FieldEquals", "value": {"field": "role", "value": "user"}},
                    {"type": "FieldGreaterThan", "value": {"field": "age", "value": 35}}]}},
                 "then_functions": [{"type": "Count", "output_field": "n"}],
                 "else_functions": [{"type": "SetField", "field": "young", "value": true}]},
                {"type": "Project", "fields": ["young"], "exclude": false}]),
            out: json!([{"young": true}]),
            ..Case::default()
        },
        Case {
            name: "ForEach sees each record's fields",
            seed: users(),
            stages: json!([{"type": "Query", "collection": "users",
                    "filter": eq("role", json!("user"))},
                {"type": "ForEach", "functions": [
                    {"type": "Insert", "collection": "log", "record": {"who": "{{name}}"}}]}]),
            out: json!([{"who": "bob"}, {"who": "cid"}]),
            state: json!({"log": [{"who": "bob"}, {"who": "cid"}]}),
            ..Case::default()
        },
        Case {
            name: "CallFunction with params",
            library: json!([{"label": "double", "parameters": {"x": {"required": true}},
                "functions": [{"type": "SetField", "field": "got", "value": "{{x}}"}]}]),
            params: json!({"y": 21}),
            stages: json!([{"type": "CallFunction", "function_label": "double",
                "params": {"x": "{{y}}"}}]),
            out: json!([{"got": 21}]),
            ..Case::default()
        },
        Case {
            name: "CallFunction with null params passes the caller's scope",
            library: json!([{"label": "echo",
                "functions": [{"type": "SetField", "field": "got", "value": "{{y}}"}]}]),
            params: json!({"y": "hi"}),
            stages: json!([{"type": "CallFunction", "function_label": "echo", "params": null}]),
            out: json!([{"got": "hi"}]),
            ..Case::default()
        },
        Case {
            name: "CallFunction of a missing function",
            stages: json!([{"type": "CallFunction", "function_label": "ghost"}]),
            err: Some((404, "ghost")),
            ..Case::default()
        },
        Case {
            name: "TryCatch",
            stages: json!([{"type": "TryCatch",
                "try_functions": [{"type": "Validate", "data_field": "p",
                    "schema": {"type": "string"}}],
                "catch_functions": [{"type": "SetField", "field": "recovered", "value": true}],
                "output_error_field": "why"},
                {"type": "Project", "fields": ["recovered"], "exclude": false}]),
            out: json!([{"recovered": true}]),
            ..Case::default()
        },
        Case {
            name: "Parallel merges branches",
            seed: users(),
            stages: json!([{"type": "FindById", "collection": "users", "record_id": "u1"},
                {"type": "Parallel", "wait_for_all": true, "functions": [
                    {"type": "Project", "fields": ["name"], "exclude": false},
                    {"type": "Project", "fields": ["age"], "exclude": false}]}]),
            out: json!([{"name": "ann"}, {"age": 40}]),
            ..Case::default()
        },
        Case {
            name: "Sleep waits on a timer",
            params: json!({"ms": 5}),
            stages: json!([{"type": "Sleep", "duration_ms": "{{ms}}"},
                {"type": "SetField", "field": "woke", "value": true}]),
            out: json!([{"woke": true}]),
            effects: (0, 1),
            ..Case::default()
        },
        Case {
            name: "Return stops the run",
            params: json!({"id": "a1"}),
            stages: json!([{"type": "Return", "fields": {"ok": true, "ref": "{{id}}"},
                "status_code": 201},
                {"type": "Insert", "collection": "never", "record": {"x": 1}}]),
            out: json!([{"ok": true, "ref": "a1"}]),
            state: json!({"never": []}),
            ..Case::default()
        },
        Case {
            name: "Validate passes",
            params: json!({"email": "a@b.c"}),
            stages: json!([{"type": "Validate", "data_field": "email",
                "schema": {"type": "string", "minLength": 3}},
                {"type": "SetField", "field": "valid", "value": true}]),
            out: json!([{"valid": true}]),
            ..Case::default()
        },
        Case {
            name: "Validate runs on_error",
            params: json!({"age": "old"}),
            stages: json!([{"type": "Validate", "data_field": "age",
                "schema": {"type": "integer"},
                "on_error": [{"type": "SetField", "field": "bad", "value": "{{validation_error}}"}]},
                {"type": "Project", "fields": ["bad"], "exclude": false}]),
            out: json!([{"bad": "~str"}]),
            ..Case::default()
        },
        Case {
            name: "Validate fails the call",
            params: json!({"age": "old"}),
            stages: json!([{"type": "Validate", "data_field": "age", "schema": {"type": "integer"}}]),
            err: Some((400, "age")),
            ..Case::default()
        },
        Case {
            name: "a missing required parameter",
            stages: json!({"parameters": {"id": {"required": true}}, "functions": []}),
            err: Some((400, "missing required parameter 'id'")),
            ..Case::default()
        },
        Case {
            name: "savepoints in a transaction",
            stages: json!({"transaction_config": {"enabled": true, "auto_rollback": true},
                "functions": [
                    {"type": "Insert", "collection": "t", "record": {"n": 1}},
                    {"type": "CreateSavepoint", "name": "s"},
                    {"type": "Insert", "collection": "t", "record": {"n": 2}},
                    {"type": "RollbackToSavepoint", "name": "s"},
                    {"type": "ReleaseSavepoint", "name": "s"},
                    {"type": "FindAll", "collection": "t"}]}),
            out: json!([{"n": 1}]),
            state: json!({"t": [{"n": 1}]}),
            ..Case::default()
        },
        Case {
            name: "a failed transactional run writes nothing",
            seed: users(),
            stages: json!({"transaction_config": {"enabled": true, "auto_rollback": true},
                "functions": [
                    {"type": "Insert", "collection": "t", "record": {"n": 1}},
                    {"type": "Increment", "collection": "users", "record_id": "u1", "field": "age"},
                    {"type": "DeleteById", "collection": "users", "record_id": "u2"},
                    {"type": "Validate", "data_field": "nope", "schema": {"type": "string"}}]}),
            err: Some((400, "nope")),
            state: json!({"t": [], "users": [
                {"name": "ann", "role": "admin", "age": 40},
                {"name": "bob", "role": "user", "age": 30},
                {"name": "cid", "role": "user", "age": 20}]}),
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn external_calls_and_kv() {
    for case in [
        Case {
            name: "HttpRequest",
            params: json!({"id": 7}),
            http: json!({"user": {"id": 7, "name": "Ann"}}),
            stages: json!([{"type": "HttpRequest", "url": "https://api.example.com/users/{{id}}",
                "method": "GET"},
                {"type": "SetField", "field": "name", "value": "{{http_response.user.name}}"}]),
            out: json!([{"http_response": {"user": {"id": 7, "name": "Ann"}}, "name": "Ann"}]),
            effects: (1, 0),
            ..Case::default()
        },
        Case {
            name: "SWR fetches once, then serves the cache",
            http: json!({"v": 1}),
            stages: json!([
                {"type": "SWR", "cache_key": "c:1", "ttl": "5m", "url": "https://x.example/v",
                 "method": "GET", "output_field": "first"},
                {"type": "SWR", "cache_key": "c:1", "ttl": "5m", "url": "https://x.example/v",
                 "method": "GET", "output_field": "second"},
                {"type": "KvGet", "key": "c:1"}]),
            out: json!([{"value": {"v": 1}}]),
            effects: (1, 0),
            ..Case::default()
        },
        Case {
            name: "KvSet, KvGet, KvExists, KvDelete",
            params: json!({"id": 3}),
            stages: json!([
                {"type": "KvSet", "key": "user:{{id}}", "value": {"n": "{{id}}"}},
                {"type": "KvExists", "key": "user:{{id}}", "output_field": "before"},
                {"type": "KvDelete", "key": "user:{{id}}"},
                {"type": "KvExists", "key": "user:{{id}}", "output_field": "after"},
                {"type": "SetField", "field": "seen", "value": "{{before}}"},
                {"type": "Project", "fields": ["seen", "after"], "exclude": false}]),
            out: json!([{"seen": true, "after": false}]),
            ..Case::default()
        },
        Case {
            name: "KvGet",
            stages: json!([{"type": "KvSet", "key": "a", "value": [1, 2]},
                {"type": "KvGet", "key": "a"}]),
            out: json!([{"value": [1, 2]}]),
            ..Case::default()
        },
        Case {
            name: "KvQuery",
            stages: json!([{"type": "KvSet", "key": "cache:a", "value": 1},
                {"type": "KvSet", "key": "cache:b", "value": 2},
                {"type": "KvSet", "key": "other", "value": 3},
                {"type": "KvQuery", "pattern": "cache:.*"}]),
            out: json!([{"key": "cache:a", "value": 1}, {"key": "cache:b", "value": 2}]),
            ..Case::default()
        },
        Case {
            name: "IdempotencyClaim",
            stages: json!([
                {"type": "IdempotencyClaim", "key": "order-1", "ttl_secs": 60, "output_field": "a"},
                {"type": "IdempotencyClaim", "key": "order-1", "ttl_secs": 60, "output_field": "b"},
                {"type": "Project", "fields": ["a", "b"], "exclude": false}]),
            out: json!([{"a": {"claimed": true, "key": "order-1"},
                         "b": {"claimed": false, "key": "order-1", "response": "~any"}}]),
            ..Case::default()
        },
        Case {
            name: "RateLimit skips over the limit",
            stages: json!([
                {"type": "RateLimit", "key": "ip", "limit": 1, "window_secs": 60,
                 "on_exceed": "skip", "output_field": "a"},
                {"type": "RateLimit", "key": "ip", "limit": 1, "window_secs": 60,
                 "on_exceed": "skip", "output_field": "b"},
                {"type": "SetField", "field": "first", "value": "{{a.allowed}}"},
                {"type": "SetField", "field": "second", "value": "{{b.allowed}}"},
                {"type": "Project", "fields": ["first", "second"], "exclude": false}]),
            out: json!([{"first": true, "second": false}]),
            ..Case::default()
        },
        Case {
            name: "RateLimit fails over the limit",
            stages: json!([
                {"type": "RateLimit", "key": "ip", "limit": 1, "window_secs": 60, "output_field": "a"},
                {"type": "RateLimit", "key": "ip", "limit": 1, "window_secs": 60, "output_field": "b"}]),
            err: Some((429, "RateLimit:")),
            ..Case::default()
        },
        Case {
            name: "LockAcquire and LockRelease",
            stages: json!([
                {"type": "LockAcquire", "key": "job", "ttl_secs": 30, "output_field": "lock"},
                {"type": "LockAcquire", "key": "job", "ttl_secs": 30, "output_field": "again"},
                {"type": "LockRelease", "key": "job", "token": "wrong", "output_field": "bad"},
                {"type": "LockRelease", "key": "job", "token": "{{lock.token}}", "output_field": "rel"},
                {"type": "SetField", "field": "got", "value": "{{lock.acquired}}"},
                {"type": "Project", "fields": ["got", "again", "bad", "rel"], "exclude": false}]),
            out: json!([{"got": true, "again": {"acquired": false},
                         "bad": {"released": false}, "rel": {"released": true}}]),
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn embeddings() {
    for case in [
        Case {
            name: "Embed with the offline embedder, from the parameters",
            params: json!({"text": "hello world"}),
            stages: json!([{"type": "Embed", "input_field": "text", "output_field": "v"}]),
            out: json!([{"text": "hello world", "v": "~vec:384"}]),
            ..Case::default()
        },
        Case {
            name: "Embed each record through the provider",
            seed: json!({"docs": [{"t": "a"}, {"t": "b"}]}),
            embed_url: Some("http://embedder.internal/v1"),
            http: json!({"data": [{"embedding": [0.5, 0.5]}, {"embedding": [0.5, 0.5]}]}),
            stages: json!([{"type": "FindAll", "collection": "docs"},
                {"type": "Embed", "input_field": "t", "output_field": "v"}]),
            out: json!([{"t": "a", "v": [0.5, 0.5]}, {"t": "b", "v": [0.5, 0.5]}]),
            effects: (1, 0),
            ..Case::default()
        },
        Case {
            name: "Embed refuses a record without text",
            seed: json!({"docs": [{"x": 1}]}),
            stages: json!([{"type": "FindAll", "collection": "docs"},
                {"type": "Embed", "input_field": "t", "output_field": "v"}]),
            err: Some((400, "no text at `t`")),
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn chat() {
    for case in [
        Case {
            name: "Chat with the offline provider",
            params: json!({"q": "what is new?"}),
            stages: json!([{"type": "Chat", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "{{q}}"}]}]),
            out: json!([{"response": "~str", "model": "tidepool-offline-v1"}]),
            ..Case::default()
        },
        Case {
            name: "Chat through a provider's stream",
            chat_url: Some("http://llm.internal/v1"),
            params: json!({"name": "Ann"}),
            http_raw: Some(concat!(
                "data: {\"choices\":[{\"delta\":{\"content\":\"Hello \"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\"Ann\"},\"finish_reason\":\"stop\"}]}\n\n",
                "data: [DONE]\n\n"
            )),
            stages: json!([{"type": "Chat", "messages": [
                {"role": "user", "content": "Greet {{name}}"}], "max_tokens": 20}]),
            out: json!([{"response": "Hello Ann", "model": "gpt-test"}]),
            effects: (1, 0),
            ..Case::default()
        },
        Case {
            name: "Chat refuses an unknown role",
            stages: json!([{"type": "Chat", "messages": [{"role": "robot", "content": "x"}]}]),
            err: Some((400, "robot")),
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn email() {
    for case in [
        Case {
            name: "EmailSend through SendGrid",
            params: json!({"who": "ann@example.com"}),
            http: json!({}),
            http_sent: vec![
                "POST https://api.sendgrid.com/v3/mail/send",
                "Bearer SG.key",
                r#""to":[{"email":"ann@example.com"}]"#,
                r#""type":"text/html""#,
                r#""reply_to":{"email":"help@example.com"}"#,
            ],
            stages: json!([{"type": "EmailSend", "to": "{{who}}", "subject": "Hi",
                "body": "<b>Welcome</b>", "from": "noreply@example.com",
                "reply_to": "help@example.com", "api_key": "SG.key", "html": true}]),
            out: json!([{"email_send":
                {"provider_status": 200, "provider_message": "{}", "provider": "sendgrid"}}]),
            effects: (1, 0),
            ..Case::default()
        },
        Case {
            name: "EmailSend reports the provider's error",
            http: json!({"errors": [{"message": "The from address does not match a verified Sender Identity."}]}),
            stages: json!([{"type": "EmailSend", "to": "a@b.c", "subject": "s", "body": "b",
                "from": "x@y.z", "api_key": "k", "output_field": "mail"},
                {"type": "Project", "fields": ["mail"], "exclude": false}]),
            out: json!([{"mail": {"provider_status": 200,
                "provider_message": "The from address does not match a verified Sender Identity.",
                "provider": "sendgrid"}}]),
            effects: (1, 0),
            ..Case::default()
        },
        Case {
            name: "EmailSend refuses another provider",
            stages: json!([{"type": "EmailSend", "to": "a@b.c", "subject": "s", "body": "b",
                "from": "x@y.z", "api_key": "k", "provider": "pigeon"}]),
            err: Some((400, "pigeon")),
            ..Case::default()
        },
    ] {
        check(&case);
    }
}

#[test]
fn crypto_and_encodings() {
    for case in [
        Case {
            name: "UuidGenerate",
            stages: json!([{"type": "UuidGenerate", "output_field": "u"}]),
            out: json!([{"u": "~uuid"}]),
            ..Case::default()
        },
        Case {
            name: "RandomToken",
            stages: json!([{"type": "RandomToken", "bytes": 16, "output_field": "t"}]),
            out: json!([{"t": "~hex:32"}]),
            ..Case::default()
        },
        Case {
            name: "HmacSign and HmacVerify (a published SHA-256 vector)",
            stages: json!([
                {"type": "HmacSign", "input": "The quick brown fox jumps over the lazy dog",
                 "secret": "key", "output_field": "mac"},
                {"type": "HmacVerify", "input": "The quick brown fox jumps over the lazy dog",
                 "provided_mac": "{{mac}}", "secret": "key", "output_field": "ok"},
                {"type": "HmacVerify", "input": "tampered", "provided_mac": "{{mac}}",
                 "secret": "key", "output_field": "bad"}]),
            out: json!([{
                "mac": "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
                "ok": true, "bad": false}]),
            ..Case::default()
        },
        Case {
            name: "BcryptHash and BcryptVerify",
            seed: json!({"users": [{"name": "ann"}]}),
            params: json!({"password": "correct horse"}),
            stages: json!([
                {"type": "FindAll", "collection": "users"},
                {"type": "BcryptHash", "plain": "{{password}}", "cost": 4, "output_field": "hash"},
                {"type": "BcryptVerify", "plain": "{{password}}", "hash_field": "hash", "output_field": "ok"},
                {"type": "BcryptVerify", "plain": "wrong", "hash_field": "hash", "output_field": "bad"},
                {"type": "BcryptVerify", "plain": "x", "hash_field": "missing", "output_field": "none"}]),
            out: json!([{"name": "ann", "hash": "~bcrypt4", "ok": true, "bad": false, "none": false}]),
            ..Case::default()
        },
        Case {
            name: "BcryptHash refuses a cost that would outrun the budget",
            stages: json!([{"type": "BcryptHash", "plain": "pw", "cost": 20, "output_field": "h"}]),
            err: Some((400, "between 4 and 16")),
            ..Case::default()
        },
        Case {
            name: "JwtSign and JwtVerify",
            stages: json!([
                {"type": "JwtSign", "claims": {"sub": "ann"}, "secret": "s3cret",
                 "expires_in_secs": 60, "output_field": "token"},
                {"type": "JwtVerify", "token_field": "token", "secret": "s3cret", "output_field": "claims"},
                {"type": "JwtVerify", "token_field": "token", "secret": "wrong", "output_field": "forged"}]),
            out: json!([{"token": "~jwt",
                "claims": {"sub": "ann", "iat": 1_767_225_600, "exp": 1_767_225_660},
                "forged": null}]),
            ..Case::default()
        },
        Case {
            name: "Base64 and hex round trips",
            stages: json!([
                {"type": "Base64Encode", "input": "héllo?", "output_field": "b"},
                {"type": "Base64Encode", "input": "héllo?", "url_safe": true, "output_field": "u"},
                {"type": "Base64Decode", "input": "{{b}}", "output_field": "b2"},
                {"type": "Base64Decode", "input": "***", "output_field": "bad"},
                {"type": "HexEncode", "input": "hi", "output_field": "h"},
                {"type": "HexDecode", "input": "{{h}}", "output_field": "h2"}]),
            out: json!([{"b": "aMOpbGxvPw==", "u": "aMOpbGxvPw", "b2": "héllo?", "bad": null,
                "h": "6869", "h2": "hi"}]),
            ..Case::default()
        },
        Case {
            name: "AesEncrypt and AesDecrypt (AES-256-GCM)",
            params: json!({"k": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"}),
            stages: json!([
                {"type": "AesEncrypt", "plaintext": "attack at dawn", "key": "{{k}}",
                 "output_field": "sealed"},
                {"type": "AesDecrypt", "ciphertext_field": "sealed", "key": "{{k}}",
                 "output_field": "opened"},
                {"type": "AesDecrypt", "ciphertext_field": "sealed",
                 "key": "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                 "output_field": "wrong_key"},
                {"type": "Project", "fields": ["opened", "wrong_key"], "exclude": false}]),
            out: json!([{"opened": "attack at dawn", "wrong_key": null}]),
            ..Case::default()
        },
        Case {
            name: "AesEncrypt refuses a short key",
            stages: json!([{"type": "AesEncrypt", "plaintext": "x", "key": "abcd",
                "output_field": "sealed"}]),
            err: Some((400, "32 bytes")),
            ..Case::default()
        },
        Case {
            name: "Slugify",
            stages: json!([{"type": "Slugify", "input": "Héllo World", "output_field": "s"}]),
            out: json!([{"s": "hello-world"}]),
            ..Case::default()
        },
        Case {
            name: "TotpGenerate (RFC 6238, T = 59 s, SHA-1, 8 digits) and TotpVerify",
            now: Some(Timestamp::from_secs(59)),
            stages: json!([
                {"type": "TotpGenerate", "secret": "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
                 "digits": 8, "output_field": "code"},
                {"type": "TotpVerify", "code": "{{code}}",
                 "secret": "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", "digits": 8, "output_field": "ok"},
                {"type": "TotpVerify", "code": "12345678",
                 "secret": "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", "digits": 8, "output_field": "bad"}]),
            out: json!([{"code": "94287082", "ok": true, "bad": false}]),
            ..Case::default()
        },
    ] {
        check(&case);
    }
}
