//! Schedules through the official client (spec F5): every schedule call
//! `ekodb_client` 0.32 has, a real schedule that fires every second and
//! shows its runs, the legacy pause/resume routes, clear errors, and
//! schedules surviving a restart (and firing again after it).

#[macro_use]
mod common;

use common::*;
use ekodb_client::{Function, ParameterDefinition, UserFunction};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The lifecycle test's schedule names a function nobody stored.
const MISSING: &str = "no stored function `backup`";

/// The stored function the firing schedules run: one record per run.
async fn save_tick(c: &Client) {
    let tick = UserFunction::new("tick", "One record per run")
        .with_parameter(ParameterDefinition::new("n").with_default(0i64.into()))
        .with_function(Function::Insert {
            collection: "ticks".into(),
            record: json!({"n": "{{n}}"}),
            bypass_ripple: None,
            ttl: None,
        });
    ok(c.save_function(tick).await);
}

/// Polls the schedule until `done` holds (at most 15 s).
async fn wait_for(c: &Client, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = ok(c.get_schedule(id).await);
        if done(&s) {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn run_count(s: &Value) -> u64 {
    s["run_count"].as_u64().expect("run_count")
}

client_test!(crud_pause_resume_trigger);
async fn crud_pause_resume_trigger(_srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let s = ok(c
        .create_schedule(json!({
            "name": "Nightly Backup",
            "description": "copy everything",
            "cron": "0 0 2 * * *",
            "timezone": "Europe/Paris",
            "function_label": "backup",
            "parameters": {"target": "s3"},
            "action": {"type": "script", "script_id": "backup"},
        }))
        .await);
    let id = s["id"].as_str().expect("plain id").to_string();
    assert_eq!(
        (s["name"].clone(), s["description"].clone()),
        (json!("Nightly Backup"), json!("copy everything"))
    );
    assert_eq!(
        (s["cron"].clone(), s["cron_expression"].clone()),
        (json!("0 0 2 * * *"), json!("0 0 2 * * *"))
    );
    assert_eq!(
        (
            s["timezone"].clone(),
            s["enabled"].clone(),
            s["status"].clone()
        ),
        (json!("Europe/Paris"), json!(true), json!("active"))
    );
    assert_eq!(
        s["action"],
        json!({"type": "script", "script_id": "backup"})
    );
    let next = s["next_execution"].as_str().expect("next_execution");
    let next = chrono::DateTime::parse_from_rfc3339(next).expect("RFC 3339");
    // 02:00 in Paris is 00:00 or 01:00 UTC.
    assert!(
        matches!(
            next.naive_utc().format("%H:%M:%S").to_string().as_str(),
            "00:00:00" | "01:00:00"
        ),
        "{next}"
    );
    assert_eq!(s["last_execution"], Value::Null);
    let other = ok(c
        .create_schedule(json!({"name": "Other", "cron_expression": "0 3 * * *"}))
        .await);
    let other_id = other["id"].as_str().unwrap().to_string();
    assert_eq!(other["cron"], "0 3 * * *");

    assert_eq!(ok(c.get_schedule(&id).await), s);
    let list = ok(c.list_schedules().await);
    let listed: Vec<&str> = list["schedules"]
        .as_array()
        .expect("schedules")
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [id.as_str(), other_id.as_str()]);

    let u = ok(c
        .update_schedule(
            &id,
            json!({"description": "copy it all", "cron": "0 30 3 * * *"}),
        )
        .await);
    assert_eq!(
        (
            u["description"].clone(),
            u["name"].clone(),
            u["cron"].clone()
        ),
        (
            json!("copy it all"),
            json!("Nightly Backup"),
            json!("0 30 3 * * *")
        )
    );
    assert_ne!(u["next_execution"], s["next_execution"]);

    let p = ok(c.pause_schedule(&id).await);
    assert_eq!(
        (
            p["enabled"].clone(),
            p["status"].clone(),
            p["next_execution"].clone()
        ),
        (json!(false), json!("paused"), Value::Null)
    );
    let r = ok(c.resume_schedule(&id).await);
    assert_eq!(
        (r["enabled"].clone(), r["status"].clone()),
        (json!(true), json!("active"))
    );
    assert!(r["next_execution"].is_string());

    // Trigger runs it once now and records the stub outcome.
    let t = ok(c.trigger_schedule(&id).await);
    assert_eq!(
        (t["status"].clone(), t["schedule_id"].clone()),
        (json!("triggered"), json!(id))
    );
    assert_eq!(
        (
            t["run"]["trigger"].clone(),
            t["run"]["status"].clone(),
            t["run"]["error"].clone()
        ),
        (json!("manual"), json!("failed"), json!(MISSING))
    );
    let after = ok(c.get_schedule(&id).await);
    assert_eq!(run_count(&after), 1);
    assert_eq!(after["last_run"], t["run"]);
    assert!(after["last_execution"].is_string());
    assert_eq!(
        after["next_execution"], r["next_execution"],
        "a manual run keeps the cadence"
    );

    ok(c.delete_schedule(&id).await);
    assert_not_found(c.get_schedule(&id).await);
    let list = ok(c.list_schedules().await);
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);
}

client_test!(fires_every_second);
async fn fires_every_second(srv: &mut TestServer, c: Client, fmt: SerializationFormat) {
    save_tick(&c).await;
    let s = ok(c
        .create_schedule(json!({"name": "tick", "cron": "* * * * * *", "function_label": "tick", "parameters": {"n": 1}}))
        .await);
    let id = s["id"].as_str().unwrap().to_string();
    let s = wait_for(&c, &id, "a run within seconds", |s| run_count(s) >= 2).await;
    let run = &s["runs"][0];
    assert_eq!(
        (
            run["trigger"].clone(),
            run["status"].clone(),
            run["error"].clone()
        ),
        (json!("cron"), json!("succeeded"), Value::Null)
    );
    assert_eq!(run["result"]["output_count"], 1, "{run}");
    // The function ran: each run wrote its record with the parameter.
    let ticks = ok(c.find_all("ticks", 1000).await);
    assert!(ticks.len() >= 2, "{} records", ticks.len());
    assert!(ticks.iter().all(|r| val(r, "n") == json!(1)));
    let scheduled =
        chrono::DateTime::parse_from_rfc3339(run["scheduled_for"].as_str().unwrap()).unwrap();
    let started =
        chrono::DateTime::parse_from_rfc3339(run["started_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        scheduled.timestamp_subsec_micros(),
        0,
        "occurrences are whole seconds"
    );
    let late = (started - scheduled).num_milliseconds();
    assert!((0..1000).contains(&late), "ran {late} ms after its time");
    // Paused: no more runs.
    ok(c.pause_schedule(&id).await);
    let paused = run_count(&ok(c.get_schedule(&id).await));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(run_count(&ok(c.get_schedule(&id).await)), paused);

    // Durable: after a crash the schedule and its history are back, and a
    // resumed schedule fires again.
    let before = ok(c.get_schedule(&id).await);
    srv.restart();
    let c = client(srv, fmt);
    assert_eq!(ok(c.get_schedule(&id).await), before);
    ok(c.resume_schedule(&id).await);
    wait_for(&c, &id, "runs after the restart", |s| {
        run_count(s) >= paused + 2
    })
    .await;
    ok(c.delete_schedule(&id).await);
}

client_test!(legacy_routes_and_errors);
async fn legacy_routes_and_errors(srv: &mut TestServer, c: Client, _fmt: SerializationFormat) {
    let s = ok(c
        .create_schedule(json!({"id": "nightly/backup", "cron": "0 2 * * *"}))
        .await);
    assert_eq!(s["id"], "nightly/backup");
    assert_eq!(
        ok(c.trigger_schedule("nightly/backup").await)["schedule_id"],
        "nightly/backup"
    );
    // The 0.25 line and Go 0.23 POST /pause and /resume.
    let token = srv.token();
    let r = srv.call(&token, "POST", "/api/schedules/nightly%2Fbackup/pause", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "paused");
    let r = srv.call(&token, "POST", "/api/schedules/nightly%2Fbackup/pause", "");
    assert_eq!(r.status, 409, "{}", r.text());
    let r = srv.call(&token, "POST", "/api/schedules/nightly%2Fbackup/resume", "");
    assert_eq!((r.status, r.json()["enabled"].clone()), (200, json!(true)));
    let r = srv.call(&token, "GET", "/api/schedules/nightly%2Fbackup/runs", "");
    assert_eq!(r.json()["runs"][0]["trigger"], "manual");

    for (body, words) in [
        (
            json!({"name": "x", "cron": "every morning"}),
            vec!["invalid cron expression", "every morning"],
        ),
        (
            json!({"name": "x", "cron": "0 3 * * *", "timezone": "Mars/Olympus_Mons"}),
            vec!["unknown time zone", "Mars/Olympus_Mons"],
        ),
        (json!({"name": "x"}), vec!["cron", "required"]),
        (
            json!({"cron": "0 3 * * *", "enabled": 1}),
            vec!["enabled", "true or false"],
        ),
        (
            json!({"id": "nightly/backup", "cron": "0 3 * * *"}),
            vec!["exists already"],
        ),
    ] {
        let code = if words[0] == "exists already" {
            409
        } else {
            400
        };
        let m = assert_api_err(c.create_schedule(body).await, &[code]);
        assert_mentions(&m, &words);
    }
    let m = assert_api_err(
        c.update_schedule("nightly/backup", json!({"timezone": "Nowhere"}))
            .await,
        &[400],
    );
    assert_mentions(&m, &["unknown time zone"]);
    assert_not_found(c.get_schedule("missing").await);
    assert_not_found(c.update_schedule("missing", json!({"name": "y"})).await);
    assert_not_found(c.delete_schedule("missing").await);
    assert_not_found(c.pause_schedule("missing").await);
    assert_not_found(c.resume_schedule("missing").await);
    assert_not_found(c.trigger_schedule("missing").await);
}

client_test!(a_run_missed_while_down_runs_once_at_startup);
/// The process is killed, stays down past the schedule's next occurrence,
/// and comes back: the schedule runs once with trigger `missed`, then goes
/// on with its cadence.
async fn a_run_missed_while_down_runs_once_at_startup(
    srv: &mut TestServer,
    c: Client,
    fmt: SerializationFormat,
) {
    save_tick(&c).await;
    let s = ok(c
        .create_schedule(json!({"name": "tick", "cron": "* * * * * *", "function_label": "tick"}))
        .await);
    let id = s["id"].as_str().unwrap().to_string();
    wait_for(&c, &id, "a first run", |s| run_count(s) >= 1).await;
    srv.kill9();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    srv.restart();
    let c = client(srv, fmt);
    let s = wait_for(&c, &id, "the catch-up run", |s| {
        s["runs"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["trigger"] == "missed"))
    })
    .await;
    let missed: Vec<&Value> = s["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"] == "missed")
        .collect();
    assert_eq!(missed.len(), 1, "one catch-up run: {s}");
    assert_eq!(missed[0]["status"], "succeeded", "{s}");
    let scheduled =
        chrono::DateTime::parse_from_rfc3339(missed[0]["scheduled_for"].as_str().unwrap()).unwrap();
    let started =
        chrono::DateTime::parse_from_rfc3339(missed[0]["started_at"].as_str().unwrap()).unwrap();
    assert!(
        (started - scheduled).num_milliseconds() >= 1000,
        "{}",
        missed[0]
    );
    // Then the cadence goes on.
    let after = run_count(&s);
    wait_for(&c, &id, "cron runs after the catch-up", |s| {
        run_count(s) >= after + 2 && s["runs"][0]["trigger"] == "cron"
    })
    .await;
    ok(c.delete_schedule(&id).await);
}

client_test!(a_run_that_waits_is_finished_in_the_history);
/// A scheduled function that waits (a `Sleep`, as it would on an
/// `HttpRequest`) is recorded as started, and its entry in the history is
/// finished when the run ends; a failing one records its error.
async fn a_run_that_waits_is_finished_in_the_history(
    _srv: &mut TestServer,
    c: Client,
    _fmt: SerializationFormat,
) {
    let slow = UserFunction::new("slow", "Waits, then writes")
        .with_function(Function::Sleep {
            duration_ms: json!(300),
        })
        .with_function(Function::Insert {
            collection: "slow_runs".into(),
            record: json!({"done": true}),
            bypass_ripple: None,
            ttl: None,
        });
    ok(c.save_function(slow).await);
    let s = ok(c
        .create_schedule(json!({"name": "slow", "cron": "0 0 1 1 *", "function_label": "slow"}))
        .await);
    let id = s["id"].as_str().unwrap().to_string();
    let t = ok(c.trigger_schedule(&id).await);
    assert_eq!(t["run"]["status"], "started", "{t}");
    let s = wait_for(&c, &id, "the run to finish", |s| {
        s["runs"][0]["status"] == "succeeded"
    })
    .await;
    let run = &s["runs"][0];
    assert!(run["finished_at"].is_string(), "{run}");
    assert_eq!(run["result"]["output_count"], 1, "{run}");
    assert_eq!(ok(c.find_all("slow_runs", 10).await).len(), 1);
}
