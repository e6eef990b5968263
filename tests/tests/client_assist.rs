//! Goals, goal templates, tasks and agents through the official client
//! (spec F1-F4): every call `ekodb_client` 0.32 has for them, their lenient
//! lifecycles, clear errors, and the documents surviving a restart.

#[macro_use]
mod common;

use common::*;
use serde_json::{json, Value};

fn ids_of(list: &Value, key: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not an array: {list}"))
        .iter()
        .map(|d| d["id"].as_str().expect("plain string id").to_string())
        .collect()
}

client_test!(goals_and_templates);
async fn goals_and_templates(srv: &mut TestServer, c: Client, fmt: SerializationFormat) {
    let g = ok(c
        .goal_create(json!({
            "title": "Launch the Beta",
            "description": "Ship it to testers",
            "priority": "high",
            "steps": [{"description": "write docs"}, {"description": "deploy", "status": "pending"}, "announce"],
            "custom": {"kept": [1, 2]},
        }))
        .await);
    let id = g["id"].as_str().expect("plain id").to_string();
    assert_eq!(g["status"], "active");
    assert_eq!(g["title"], "Launch the Beta");
    assert_eq!(g["custom"], json!({"kept": [1, 2]}));
    assert_eq!(
        g["steps"][2],
        json!({"description": "announce", "status": "pending"})
    );
    assert!(chrono::DateTime::parse_from_rfc3339(g["created_at"].as_str().unwrap()).is_ok());
    let other = ok(c
        .goal_create(json!({"title": "Other", "description": "unrelated"}))
        .await);

    assert_eq!(ok(c.goal_get(&id).await), g);
    assert_eq!(
        ids_of(&ok(c.goal_list().await), "goals"),
        [id.clone(), other["id"].as_str().unwrap().to_string()]
    );
    assert_eq!(
        ids_of(&ok(c.goal_search("beta").await), "goals"),
        [id.as_str()]
    );
    assert_eq!(
        ids_of(&ok(c.goal_search("TESTERS").await), "goals"),
        [id.as_str()]
    );
    assert!(ids_of(&ok(c.goal_search("nothing like it").await), "goals").is_empty());

    let u = ok(c
        .goal_update(&id, json!({"priority": "low", "title": null}))
        .await);
    assert_eq!(
        (u["priority"].clone(), u["title"].clone()),
        (json!("low"), json!("Launch the Beta"))
    );

    // The examples' order: fail a step never started, complete, approve,
    // and reject a goal that was never completed: all succeed.
    let s = ok(c
        .goal_step_fail(&id, 1, json!({"error": "disk full"}))
        .await);
    assert_eq!(s["steps"][1]["status"], "failed");
    assert_eq!(s["steps"][1]["error"], "disk full");
    let s = ok(c.goal_step_start(&id, 0).await);
    assert_eq!(s["steps"][0]["status"], "in_progress");
    let s = ok(c
        .goal_step_complete(&id, 0, json!({"result": "docs written"}))
        .await);
    assert_eq!(
        (
            s["steps"][0]["status"].clone(),
            s["steps"][0]["result"].clone()
        ),
        (json!("completed"), json!("docs written"))
    );
    let done = ok(c.goal_complete(&id, json!({"summary": "All done"})).await);
    assert_eq!(
        (done["status"].clone(), done["summary"].clone()),
        (json!("pending_review"), json!("All done"))
    );
    assert_eq!(ok(c.goal_approve(&id).await)["status"], "in_progress");
    let oid = other["id"].as_str().unwrap();
    let r = ok(c.goal_reject(oid, json!({"reason": "Bad plan"})).await);
    assert_eq!(
        (r["status"].clone(), r["reason"].clone()),
        (json!("failed"), json!("Bad plan"))
    );

    // Errors: out-of-range step (400), unknown ids (404).
    let msg = assert_api_err(c.goal_step_start(&id, 7).await, &[400]);
    assert_mentions(&msg, &["step index 7", "3 step"]);
    assert_not_found(c.goal_get("no-such-goal").await);
    assert_not_found(c.goal_approve("no-such-goal").await);
    assert_not_found(c.goal_step_start("no-such-goal", 0).await);
    assert_not_found(c.goal_update("no-such-goal", json!({"a": 1})).await);
    assert_not_found(c.goal_delete("no-such-goal").await);

    // Templates: CRUD without a lifecycle.
    let t = ok(c
        .goal_template_create(
            json!({"title": "Release", "description": "A release", "steps": ["tag", "build"]}),
        )
        .await);
    let tid = t["id"].as_str().unwrap().to_string();
    assert_eq!(
        t["steps"][1],
        json!({"description": "build", "status": "pending"})
    );
    assert_eq!(ok(c.goal_template_get(&tid).await), t);
    assert_eq!(
        ids_of(&ok(c.goal_template_list().await), "templates"),
        [tid.as_str()]
    );
    let t2 = ok(c
        .goal_template_update(&tid, json!({"description": "Monthly release"}))
        .await);
    assert_eq!(
        (t2["title"].clone(), t2["description"].clone()),
        (json!("Release"), json!("Monthly release"))
    );
    let bad = assert_api_err(
        c.goal_template_create(json!({"steps": "not a list"})).await,
        &[400],
    );
    assert_mentions(&bad, &["steps", "array"]);

    // Everything survives a restart.
    let before = ok(c.goal_get(&id).await);
    srv.restart();
    let c = client(srv, fmt);
    assert_eq!(ok(c.goal_get(&id).await), before);
    assert_eq!(ok(c.goal_template_get(&tid).await), t2);

    ok(c.goal_delete(&id).await);
    assert_not_found(c.goal_get(&id).await);
    ok(c.goal_template_delete(&tid).await);
    assert_not_found(c.goal_template_get(&tid).await);
    assert!(ids_of(&ok(c.goal_template_list().await), "templates").is_empty());
    assert_eq!(ids_of(&ok(c.goal_list().await), "goals"), [oid.to_string()]);
}

client_test!(tasks);
async fn tasks(srv: &mut TestServer, c: Client, fmt: SerializationFormat) {
    let t = ok(c
        .task_create(json!({"name": "Hourly report", "cron": "0 * * * *", "max_consecutive_failures": 2, "chat_id": "c1"}))
        .await);
    let id = t["id"].as_str().expect("plain id").to_string();
    assert_eq!(t["status"], "active");
    assert_eq!(t["chat_id"], "c1");
    let next = t["next_run"].as_str().expect("next_run").to_string();
    let once = ok(c
        .task_create(json!({"title": "One shot", "due_at": "2020-01-01T00:00:00Z"}))
        .await);
    let once_id = once["id"].as_str().unwrap().to_string();

    assert_eq!(ok(c.task_get(&id).await), t);
    assert_eq!(
        ids_of(&ok(c.task_list().await), "tasks"),
        [id.clone(), once_id.clone()]
    );
    // Due: the one-shot task now; the hourly one at its next run.
    assert_eq!(
        ids_of(&ok(c.task_due("2021-01-01T00:00:00Z").await), "tasks"),
        [once_id.as_str()]
    );
    let due_later = ids_of(&ok(c.task_due(&next).await), "tasks");
    assert_eq!(due_later, [id.clone(), once_id.clone()]);

    let u = ok(c
        .task_update(&id, json!({"description": "the report"}))
        .await);
    assert_eq!(
        (u["description"].clone(), u["next_run"].clone()),
        (json!("the report"), json!(next))
    );

    // Lenient: succeed, start a task that already succeeded, fail it twice.
    let s = ok(c.task_succeed(&once_id, json!({"output": "Success"})).await);
    assert_eq!(
        (
            s["status"].clone(),
            s["last_output"].clone(),
            s["run_count"].clone()
        ),
        (json!("active"), json!("Success"), json!(1))
    );
    assert!(ids_of(&ok(c.task_due("2030-01-01T00:00:00Z").await), "tasks").contains(&id));
    assert!(!ids_of(&ok(c.task_due("2030-01-01T00:00:00Z").await), "tasks").contains(&once_id));
    assert_eq!(ok(c.task_start(&once_id).await)["status"], "running");
    assert_eq!(ok(c.task_start(&id).await)["status"], "running");
    let f = ok(c.task_fail(&id, json!({"error": "Timeout"})).await);
    assert_eq!(
        (
            f["status"].clone(),
            f["last_error"].clone(),
            f["consecutive_failures"].clone()
        ),
        (json!("active"), json!("Timeout"), json!(1))
    );
    let f = ok(c.task_fail(&id, json!({"error": "Timeout again"})).await);
    assert_eq!(f["status"], "failed");
    assert_eq!(ok(c.task_pause(&id).await)["status"], "paused");
    assert!(!ids_of(&ok(c.task_due("2030-01-01T00:00:00Z").await), "tasks").contains(&id));
    let r = ok(c
        .task_resume(
            &id,
            json!({"next_run": "2026-03-21T00:00:00Z", "reason": "fixed"}),
        )
        .await);
    assert_eq!(
        (r["status"].clone(), r["consecutive_failures"].clone()),
        (json!("active"), json!(0))
    );
    assert!(r["next_run"]
        .as_str()
        .unwrap()
        .starts_with("2026-03-21T00:00:00"));
    // A resumed task fails again: fine.
    ok(c.task_fail(&id, json!({"error": "x"})).await);

    // Errors.
    let m = assert_api_err(
        c.task_create(json!({"name": "bad", "cron": "every day"}))
            .await,
        &[400],
    );
    assert_mentions(&m, &["invalid cron expression", "every day"]);
    let m = assert_api_err(
        c.task_create(json!({"cron": "0 3 * * *", "timezone": "Mars/Base"}))
            .await,
        &[400],
    );
    assert_mentions(&m, &["unknown time zone", "Mars/Base"]);
    let m = assert_api_err(c.task_due("yesterday").await, &[400]);
    assert_mentions(&m, &["now", "RFC 3339"]);
    let m = assert_api_err(
        c.task_resume(&id, json!({"next_run": "soon"})).await,
        &[400],
    );
    assert_mentions(&m, &["next_run"]);
    assert_not_found(c.task_get("nope").await);
    assert_not_found(c.task_start("nope").await);
    assert_not_found(c.task_succeed("nope", json!({})).await);
    assert_not_found(c.task_delete("nope").await);

    let before = ok(c.task_get(&id).await);
    srv.restart();
    let c = client(srv, fmt);
    assert_eq!(ok(c.task_get(&id).await), before);
    ok(c.task_delete(&id).await);
    assert_not_found(c.task_get(&id).await);
    assert_eq!(ids_of(&ok(c.task_list().await), "tasks"), [once_id]);
}

client_test!(agents);
async fn agents(srv: &mut TestServer, c: Client, fmt: SerializationFormat) {
    let a = ok(c
        .agent_create(json!({"name": "Helper", "system_prompt": "You help.", "deployment_id": "d/1", "capabilities": ["search"], "llm_model": "m"}))
        .await);
    let id = a["id"].as_str().expect("plain id").to_string();
    assert_eq!(
        (a["name"].clone(), a["system_prompt"].clone()),
        (json!("Helper"), json!("You help."))
    );
    // Names are not unique; by-name answers the oldest.
    let b = ok(c
        .agent_create(json!({"name": "Helper", "deployment_id": "d2"}))
        .await);
    let bid = b["id"].as_str().unwrap().to_string();

    assert_eq!(ok(c.agent_get(&id).await), a);
    assert_eq!(ok(c.agent_get_by_name("Helper").await)["id"], json!(id));
    assert_not_found(c.agent_get_by_name("Nobody").await);
    assert_eq!(
        ids_of(&ok(c.agent_list().await), "agents"),
        [id.clone(), bid.clone()]
    );
    assert_eq!(
        ids_of(&ok(c.agents_by_deployment("d/1").await), "agents"),
        [id.as_str()]
    );
    assert!(ids_of(&ok(c.agents_by_deployment("none").await), "agents").is_empty());
    let u = ok(c
        .agent_update(&id, json!({"name": "Updated", "tools": ["t"]}))
        .await);
    assert_eq!(
        (
            u["name"].clone(),
            u["tools"].clone(),
            u["system_prompt"].clone()
        ),
        (json!("Updated"), json!(["t"]), json!("You help."))
    );
    assert_eq!(ok(c.agent_get_by_name("Helper").await)["id"], json!(bid));
    assert_api_err(c.agent_create(json!(["not", "an", "object"])).await, &[400]);
    assert_not_found(c.agent_get("nope").await);
    assert_not_found(c.agent_update("nope", json!({})).await);

    srv.restart();
    let c = client(srv, fmt);
    assert_eq!(ok(c.agent_get(&id).await), u);
    ok(c.agent_delete(&id).await);
    assert_not_found(c.agent_get(&id).await);
    assert_not_found(c.agent_delete(&id).await);
    assert_eq!(ids_of(&ok(c.agent_list().await), "agents"), [bid]);
}
