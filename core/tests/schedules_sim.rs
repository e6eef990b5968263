//! Schedules under a simulated clock (spec F5): the server in process, its
//! one timer table driven from deadline to deadline, its log kept so a
//! restart replays exactly what was durable. Checks when runs happen (the
//! right minute, across daylight-saving changes in New York), pause and
//! resume, the catch-up run after a restart, trigger and the history cap,
//! and the errors for bad input.

use serde_json::{json, Value as J};
use tidepool_core::config::Config;
use tidepool_core::ids::{ConnId, Lsn};
use tidepool_core::server::Server;
use tidepool_core::time::Timestamp;
use tidepool_core::wire::http::{Method, Request};

const KEY: &str = "sched-key";
const SECRET: &[u8] = b"sched-secret";
/// No stored function by that name exists in these tests: the run fails
/// and says so.
fn missing(label: &str) -> String {
    format!("no stored function `{label}`")
}

fn at(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap_or_else(|| panic!("bad time {s}"))
}

struct World {
    server: Server,
    now: Timestamp,
    log: Vec<(Lsn, Vec<u8>)>,
    restarts: u64,
}

impl World {
    fn new(now: &str) -> World {
        let now = at(now);
        let mut server = Server::new(config(), SECRET, 1);
        server.handle_recovered(Lsn::ZERO, now);
        World {
            server,
            now,
            log: Vec::new(),
            restarts: 0,
        }
    }

    /// Makes every committed batch durable (kept for replay).
    fn drain(&mut self) {
        let mut last = None;
        while let Some(c) = self.server.poll_log() {
            last = Some(c.lsn);
            self.log.push((c.lsn, c.payload));
        }
        if let Some(lsn) = last {
            self.server.handle_durable(lsn);
        }
    }

    fn request(
        &mut self,
        method: Method,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, J) {
        let req = Request::new(method, target, headers, body);
        let reply = self.server.handle_request(ConnId(1), &req, None, self.now);
        self.drain();
        assert!(reply.pending.is_none(), "schedule calls answer at once");
        let response = reply.response.into_rendered();
        let v = serde_json::from_slice(&response.body).unwrap_or(J::Null);
        (response.status, v)
    }

    fn call(&mut self, method: Method, target: &str, body: Option<J>) -> (u16, J) {
        let (_, t) = self.request(
            Method::Post,
            "/api/auth/token",
            &[("content-type", "application/json")],
            json!({"api_key": KEY}).to_string().as_bytes(),
        );
        let bearer = format!("Bearer {}", t["token"].as_str().expect("token"));
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.request(
            method,
            target,
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            body.as_bytes(),
        )
    }

    fn ok(&mut self, method: Method, target: &str, body: Option<J>) -> J {
        let (status, v) = self.call(method, target, body);
        assert!(status == 200 || status == 201, "{target}: {status} {v}");
        v
    }

    fn create(&mut self, body: J) -> String {
        let s = self.ok(Method::Post, "/api/schedules", Some(body));
        s["id"].as_str().expect("id").to_string()
    }

    fn get(&mut self, id: &str) -> J {
        self.ok(Method::Get, &format!("/api/schedules/{id}"), None)
    }

    /// The runs' start times, oldest first, with their triggers.
    fn runs(&mut self, id: &str) -> Vec<(String, String)> {
        let s = self.get(id);
        let mut runs: Vec<(String, String)> = s["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| {
                (
                    r["started_at"].as_str().unwrap().to_string(),
                    r["trigger"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        runs.reverse();
        runs
    }

    /// Moves the clock to `target`, firing every deadline on the way at
    /// its own time.
    fn advance_to(&mut self, target: &str) {
        let target = at(target);
        for _ in 0..100_000 {
            match self.server.poll_timeout() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.server.handle_timeout(self.now);
                    self.drain();
                }
                _ => {
                    self.now = self.now.max(target);
                    return;
                }
            }
        }
        panic!("timers keep firing without the clock moving");
    }

    /// The process stops; it starts again at `later` from its log.
    fn restart_at(&mut self, later: &str) {
        self.restarts += 1;
        let mut server = Server::new(config(), SECRET, 1 + self.restarts);
        let mut last = Lsn::ZERO;
        for (lsn, payload) in &self.log {
            let batch = tidepool_core::engine::mutation::decode(payload).expect("batch");
            server.replay(*lsn, batch);
            last = *lsn;
        }
        self.now = at(later);
        server.handle_recovered(last, self.now);
        self.server = server;
        self.drain();
    }
}

fn config() -> Config {
    Config {
        api_keys: vec![KEY.into()],
        ..Config::default()
    }
}

fn z(s: &str) -> String {
    at(s).to_rfc3339_z()
}

#[test]
fn fires_at_the_right_minute_with_one_timer() {
    let mut w = World::new("2026-01-01T10:00:30Z");
    let id = w.create(json!({"name": "quarter", "cron": "*/15 * * * *", "function_label": "report", "parameters": {"n": 1}}));
    let daily = w.create(json!({"name": "daily", "cron_expression": "0 3 * * *"}));
    let s = w.get(&id);
    assert_eq!(s["next_execution"], json!(z("2026-01-01T10:15:00Z")));
    assert_eq!(
        (s["status"].clone(), s["enabled"].clone()),
        (json!("active"), json!(true))
    );
    assert_eq!(
        (s["cron"].clone(), s["cron_expression"].clone()),
        (json!("*/15 * * * *"), json!("*/15 * * * *"))
    );
    assert_eq!(s["last_execution"], J::Null);
    // One timer, for the earliest schedule.
    assert_eq!(w.server.poll_timeout(), Some(at("2026-01-01T10:15:00Z")));

    w.advance_to("2026-01-01T10:14:59Z");
    assert!(w.runs(&id).is_empty());
    w.advance_to("2026-01-01T10:15:00Z");
    let s = w.get(&id);
    let run = &s["runs"][0];
    assert_eq!(run["trigger"], "cron");
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"], missing("report"));
    assert_eq!(run["scheduled_for"], json!(z("2026-01-01T10:15:00Z")));
    assert_eq!(run["started_at"], json!(z("2026-01-01T10:15:00Z")));
    assert_eq!(s["last_run"], *run);
    assert_eq!(s["last_execution"], json!(z("2026-01-01T10:15:00Z")));
    assert_eq!(s["next_execution"], json!(z("2026-01-01T10:30:00Z")));

    w.advance_to("2026-01-02T03:00:00Z");
    let quarter = w.runs(&id);
    assert_eq!(
        w.get(&id)["run_count"],
        68,
        "10:15 through 03:00 every 15 minutes"
    );
    assert!(quarter
        .windows(2)
        .all(|p| at(&p[1].0).since(at(&p[0].0)).as_secs() == 900));
    assert!(quarter.iter().all(|(_, t)| t == "cron"));
    assert_eq!(quarter.last().unwrap().0, z("2026-01-02T03:00:00Z"));
    assert_eq!(
        w.runs(&daily),
        [(z("2026-01-02T03:00:00Z"), "cron".to_string())]
    );
    // A schedule without a function says so in its run.
    assert_eq!(
        w.get(&daily)["runs"][0]["error"],
        "the schedule names no stored function to run (`function_label`)"
    );
    // The history keeps 20 runs; the count goes on.
    let s = w.get(&id);
    assert_eq!(
        (s["runs"].as_array().unwrap().len(), s["run_count"].clone()),
        (20, json!(68))
    );
}

#[test]
fn across_daylight_saving_changes_in_new_york() {
    let mut w = World::new("2026-03-07T12:00:00Z");
    let tz = "America/New_York";
    // 2026-03-08 02:00 EST jumps to 03:00 EDT: the 02:30 job runs once, at 03:00.
    let spring = w.create(json!({"cron": "30 2 * * *", "timezone": tz, "function_label": "f"}));
    // Every 30 minutes: the gap's times are skipped.
    let half = w.create(json!({"cron": "0,30 * * * *", "timezone": tz, "function_label": "f"}));
    w.advance_to("2026-03-10T12:00:00Z");
    let times: Vec<String> = w.runs(&spring).into_iter().map(|r| r.0).collect();
    assert_eq!(
        times,
        [
            z("2026-03-08T07:00:00Z"),
            z("2026-03-09T06:30:00Z"),
            z("2026-03-10T06:30:00Z")
        ]
    );
    let half_runs: Vec<String> = w.runs(&half).into_iter().map(|r| r.0).collect();
    // From 07:00 EST on the 7th (12:00Z) to 08:00 EDT on the 10th: 72 hours
    // of real time, every 30 minutes.
    assert_eq!(w.get(&half)["run_count"], 144);
    assert_eq!(half_runs.last().unwrap(), &z("2026-03-10T12:00:00Z"));
    assert!(half_runs
        .windows(2)
        .all(|p| at(&p[1]).since(at(&p[0])).as_secs() == 1800));

    // 2026-11-01 02:00 EDT falls back to 01:00 EST: the 01:30 job runs once.
    let mut w = World::new("2026-10-31T12:00:00Z");
    let fall = w.create(json!({"cron": "30 1 * * *", "timezone": tz, "function_label": "f"}));
    w.advance_to("2026-11-02T12:00:00Z");
    let times: Vec<String> = w.runs(&fall).into_iter().map(|r| r.0).collect();
    assert_eq!(
        times,
        [z("2026-11-01T05:30:00Z"), z("2026-11-02T06:30:00Z")]
    );
}

#[test]
fn pause_and_resume() {
    let mut w = World::new("2026-01-01T10:00:30Z");
    let id = w.create(json!({"name": "hourly", "cron": "0 * * * *", "function_label": "f"}));
    w.advance_to("2026-01-01T10:10:00Z");
    // The 0.32 client pauses with a partial update.
    let s = w.ok(
        Method::Put,
        &format!("/api/schedules/{id}"),
        Some(json!({"enabled": false})),
    );
    assert_eq!(
        (
            s["status"].clone(),
            s["enabled"].clone(),
            s["next_execution"].clone()
        ),
        (json!("paused"), json!(false), J::Null)
    );
    assert_eq!(s["name"], "hourly");
    assert_eq!(
        w.server.poll_timeout(),
        None,
        "no timer while every schedule is paused"
    );
    w.advance_to("2026-01-01T13:20:00Z");
    assert!(w.runs(&id).is_empty());
    let s = w.ok(
        Method::Put,
        &format!("/api/schedules/{id}"),
        Some(json!({"enabled": true})),
    );
    assert_eq!(
        (s["status"].clone(), s["next_execution"].clone()),
        (json!("active"), json!(z("2026-01-01T14:00:00Z")))
    );
    w.advance_to("2026-01-01T14:00:00Z");
    assert_eq!(
        w.runs(&id),
        [(z("2026-01-01T14:00:00Z"), "cron".to_string())]
    );

    // The legacy routes: pausing twice is a 409; resuming an active one is fine.
    let p = w.ok(Method::Post, &format!("/api/schedules/{id}/pause"), None);
    assert_eq!(p["status"], "paused");
    let (status, e) = w.call(Method::Post, &format!("/api/schedules/{id}/pause"), None);
    assert_eq!(status, 409, "{e}");
    w.advance_to("2026-01-01T16:30:00Z");
    assert_eq!(w.runs(&id).len(), 1);
    let r = w.ok(Method::Post, &format!("/api/schedules/{id}/resume"), None);
    assert_eq!(
        (r["status"].clone(), r["next_execution"].clone()),
        (json!("active"), json!(z("2026-01-01T17:00:00Z")))
    );
    let r = w.ok(Method::Post, &format!("/api/schedules/{id}/resume"), None);
    assert_eq!(r["status"], "active");
    // A paused schedule can still be triggered by hand.
    w.ok(
        Method::Put,
        &format!("/api/schedules/{id}"),
        Some(json!({"enabled": false})),
    );
    let t = w.ok(Method::Post, &format!("/api/schedules/{id}/trigger"), None);
    assert_eq!(
        (
            t["status"].clone(),
            t["schedule_id"].clone(),
            t["run"]["trigger"].clone()
        ),
        (json!("triggered"), json!(id), json!("manual"))
    );
    assert_eq!(w.runs(&id).len(), 2);
}

#[test]
fn missed_runs_after_a_restart_run_once() {
    let mut w = World::new("2026-01-01T10:00:30Z");
    let hourly = w.create(json!({"cron": "0 * * * *", "function_label": "f"}));
    let paused = w.create(json!({"cron": "0 * * * *", "function_label": "f", "enabled": false}));
    let daily = w.create(json!({"cron": "0 3 * * *", "function_label": "f"}));
    w.advance_to("2026-01-01T11:30:00Z");
    assert_eq!(w.runs(&hourly).len(), 1);

    // Down from 11:30 to 14:10: the 12:00, 13:00 and 14:00 runs were missed.
    w.restart_at("2026-01-01T14:10:00Z");
    assert_eq!(w.server.poll_timeout(), Some(at("2026-01-01T14:10:00Z")));
    w.advance_to("2026-01-01T14:10:00Z");
    let s = w.get(&hourly);
    assert_eq!(s["run_count"], 2, "one catch-up run, not three");
    let run = &s["runs"][0];
    assert_eq!(
        (
            run["trigger"].clone(),
            run["scheduled_for"].clone(),
            run["started_at"].clone()
        ),
        (
            json!("missed"),
            json!(z("2026-01-01T12:00:00Z")),
            json!(z("2026-01-01T14:10:00Z"))
        )
    );
    assert_eq!(s["next_execution"], json!(z("2026-01-01T15:00:00Z")));
    assert!(w.runs(&paused).is_empty());
    assert!(w.runs(&daily).is_empty(), "its next run is still ahead");
    w.advance_to("2026-01-01T15:00:00Z");
    assert_eq!(
        w.runs(&hourly).last().unwrap(),
        &(z("2026-01-01T15:00:00Z"), "cron".to_string())
    );

    // A restart before the next run misses nothing.
    w.restart_at("2026-01-01T15:30:00Z");
    w.advance_to("2026-01-01T15:59:59Z");
    assert_eq!(w.get(&hourly)["run_count"], 3);
    w.advance_to("2026-01-01T16:00:00Z");
    assert_eq!(w.get(&hourly)["run_count"], 4);
}

#[test]
fn history_keeps_the_last_twenty_runs() {
    let mut w = World::new("2026-01-01T10:00:30Z");
    let id =
        w.create(json!({"id": "nightly/backup", "cron": "0 2 * * *", "function_label": "backup"}));
    assert_eq!(id, "nightly/backup");
    for _ in 0..25 {
        let t = w.ok(
            Method::Post,
            "/api/schedules/nightly%2Fbackup/trigger",
            None,
        );
        assert_eq!(t["schedule_id"], "nightly/backup");
    }
    let r = w.ok(Method::Get, "/api/schedules/nightly%2Fbackup/runs", None);
    let runs = r["runs"].as_array().unwrap();
    assert_eq!((runs.len(), r["run_count"].clone()), (20, json!(25)));
    assert_eq!(
        (runs[0]["run"].clone(), runs[19]["run"].clone()),
        (json!(25), json!(6))
    );
    assert!(runs.iter().all(|r| r["trigger"] == "manual"
        && r["error"] == missing("backup").as_str()
        && r["scheduled_for"].is_null()));
    // Triggering does not move the cadence.
    assert_eq!(
        w.get("nightly%2Fbackup")["next_execution"],
        json!(z("2026-01-02T02:00:00Z"))
    );
    let list = w.ok(Method::Get, "/api/schedules", None);
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);
    w.ok(Method::Delete, "/api/schedules/nightly%2Fbackup", None);
    assert_eq!(w.server.poll_timeout(), None);
}

#[test]
fn bad_input_is_refused_clearly() {
    let mut w = World::new("2026-01-01T10:00:30Z");
    for (body, status, words) in [
        (
            json!({"name": "x", "cron": "every day at noon"}),
            400,
            "invalid cron expression",
        ),
        (
            json!({"name": "x", "cron": "0 3 * * *", "timezone": "Atlantis/Capital"}),
            400,
            "unknown time zone `Atlantis/Capital`",
        ),
        (
            json!({"name": "x"}),
            400,
            "`cron` (or `cron_expression`) is required",
        ),
        (
            json!({"cron": "0 3 * * *", "enabled": "no"}),
            400,
            "`enabled` must be true or false",
        ),
        (json!(["a"]), 400, "must be a JSON object"),
    ] {
        let (s, e) = w.call(Method::Post, "/api/schedules", Some(body.clone()));
        assert_eq!(s, status, "{body}: {e}");
        assert!(
            e["message"].as_str().unwrap_or("").contains(words),
            "{body}: {e}"
        );
    }
    let id = w.create(json!({"id": "one", "cron": "0 3 * * *"}));
    let (s, _) = w.call(
        Method::Post,
        "/api/schedules",
        Some(json!({"id": "one", "cron": "0 3 * * *"})),
    );
    assert_eq!(s, 409);
    let (s, e) = w.call(
        Method::Put,
        &format!("/api/schedules/{id}"),
        Some(json!({"cron": "99 * * * *"})),
    );
    assert_eq!(s, 400, "{e}");
    assert_eq!(
        w.get(&id)["cron"],
        "0 3 * * *",
        "a refused update changes nothing"
    );
    for (m, path) in [
        (Method::Get, "/api/schedules/missing"),
        (Method::Put, "/api/schedules/missing"),
        (Method::Delete, "/api/schedules/missing"),
        (Method::Post, "/api/schedules/missing/trigger"),
        (Method::Post, "/api/schedules/missing/pause"),
        (Method::Get, "/api/schedules/missing/runs"),
    ] {
        let (s, e) = w.call(m, path, Some(json!({})));
        assert_eq!(s, 404, "{path}: {e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("schedule `missing` not found"),
            "{e}"
        );
    }
}

#[test]
fn a_run_caught_by_a_restart_is_recorded_as_interrupted() {
    let mut w = World::new("2026-01-01T10:00:30Z");
    // The function waits 20 s: its run is still going at 10:01:10.
    w.ok(
        Method::Post,
        "/api/functions",
        Some(json!({"label": "slow", "name": "slow",
            "functions": [{"type": "Sleep", "duration_ms": 20_000}]})),
    );
    let id = w.create(json!({"cron": "1 10 * * *", "function_label": "slow"}));
    w.advance_to("2026-01-01T10:01:10Z");
    assert_eq!(w.get(&id)["runs"][0]["status"], "started");
    w.restart_at("2026-01-01T10:05:00Z");
    let run = w.get(&id)["runs"][0].clone();
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        run.to_string().contains("interrupted"),
        "the history says why: {run}"
    );
    assert_eq!(w.get(&id)["run_count"], 1, "and nothing runs again for it");
}
