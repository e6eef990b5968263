//! Fuzzer-built JSON (non-JSON inputs are skipped) as
//! `{"definition": {...}, "params": {...}, "seed": [records]}`: the
//! definition goes through `definition::parse` (the checks every stored
//! function passes) and, when accepted, its canonical form parses again to
//! itself; then it runs against an in-memory engine seeded with `seed`,
//! with `params` substituted into its placeholders, under a small budget,
//! every `HttpRequest` answered with a canned body and every `Sleep` at
//! once. Nothing panics, and every run ends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value as J};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tidepool_core::engine::Engine;
use tidepool_core::functions::definition::{self, Definition};
use tidepool_core::functions::interp::{Library, World};
use tidepool_core::functions::{Budget, Effect, Poll, Resume, Run};
use tidepool_core::time::Timestamp;

struct Lib(HashMap<String, Arc<Definition>>);

impl Library for Lib {
    fn function(&mut self, _: &Engine, id_or_label: &str) -> Option<Arc<Definition>> {
        self.0.get(id_or_label).cloned()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(J::Object(input)) = serde_json::from_slice::<J>(data) else {
        return;
    };
    let Some(body) = input.get("definition") else {
        return;
    };
    let Ok(def) = definition::parse(body) else {
        return;
    };
    let canonical = def.to_json();
    let again = definition::parse(&canonical).expect("a stored definition parses again");
    assert_eq!(again.to_json(), canonical, "the canonical form is stable");

    let now = Timestamp::from_secs(1_767_225_600);
    let mut engine = Engine::new(1);
    for r in input.get("seed").and_then(J::as_array).into_iter().flatten().take(50) {
        let _ = engine.insert("seed", r.clone(), now);
    }
    let mut lib = Lib(HashMap::from([(def.label.clone(), Arc::new(def.clone()))]));
    let params = match input.get("params") {
        Some(J::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    let budget = Budget {
        max_steps: 300,
        max_time: Duration::from_secs(5),
        max_depth: 8,
        max_records: 500,
        max_response_bytes: 4096,
    };
    let Ok(mut run) = Run::new(&def, params, Arc::default(), budget, now) else {
        return;
    };
    let mut n = 0u8;
    let mut random = |out: &mut [u8]| out.iter_mut().for_each(|b| {
        n = n.wrapping_add(1);
        *b = n;
    });
    let mut answer = None;
    for _ in 0..10_000 {
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
            Poll::Done(_) => return,
            Poll::Wait(Effect::Http(_)) => {
                answer = Some(Resume::Http(Ok((200, br#"{"ok":true,"n":[1,2]}"#.to_vec()))))
            }
            Poll::Wait(Effect::Sleep(_)) => answer = Some(Resume::Slept),
            // bcrypt at a fuzzed cost is seconds of CPU: its value is not
            // what is fuzzed here.
            Poll::Wait(Effect::Compute(_)) => answer = Some(Resume::Computed(Default::default())),
        }
    }
    panic!("a run under a 300-stage budget did not end");
});
