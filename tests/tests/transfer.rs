//! A collection out and in as JSON Lines: `GET /api/export/{collection}` and
//! `POST /api/import/{collection}` round-trip records exactly (ids and
//! types), an import lands whole or not at all (or up to its first bad
//! line with `?partial=true`), reports bad lines by number, survives
//! `kill -9`, and is for admin keys only. The `tidepool export` and
//! `tidepool import` subcommands do the same from the shell.

use serde_json::{json, Value};
use tidepool_tests::{both_runtimes, Runtime, TestServer};

fn export(srv: &TestServer, token: &str, c: &str) -> (u16, Vec<Value>) {
    let r = srv.call(token, "GET", &format!("/api/export/{c}"), "");
    if r.status != 200 {
        return (r.status, Vec::new());
    }
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let mut lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    lines.sort_by_key(|v| v["id"].as_str().unwrap_or_default().to_string());
    (200, lines)
}

fn import(srv: &TestServer, token: &str, c: &str, body: &str) -> (u16, Value) {
    let r = srv.request(
        "POST",
        &format!("/api/import/{c}"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/x-ndjson"),
        ],
        body,
    );
    (r.status, r.json())
}

both_runtimes!(
    export_then_import_round_trips_a_collection,
    |rt: Runtime| {
        let mut srv = TestServer::start(rt);
        let token = srv.token();
        let typed = [
            json!({"name": {"type": "String", "value": "ada"},
               "n": {"type": "Integer", "value": 3},
               "x": {"type": "Float", "value": 1.5},
               "ok": {"type": "Boolean", "value": true},
               "when": {"type": "DateTime", "value": "2026-01-02T03:04:05Z"},
               "tags": {"type": "Array", "value": [{"type": "String", "value": "a"}]}}),
            json!({"name": "plain", "n": 7, "nested": {"a": [1, 2, {"b": null}]}}),
            json!({"id": "chosen-id", "name": "named", "x": 2.0}),
        ];
        for r in &typed {
            srv.insert("src", r);
        }
        let (status, out) = export(&srv, &token, "src");
        assert_eq!(status, 200);
        assert_eq!(out.len(), 3);
        assert!(out.iter().any(|r| r["id"] == "chosen-id"));

        let body: String = out.iter().map(|r| format!("{r}\n")).collect();
        let (status, reply) = import(&srv, &token, "dst", &body);
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["imported"], 3);
        let (_, back) = export(&srv, &token, "dst");
        assert_eq!(back, out, "same ids, fields and types");

        // Importing the same ids again: refused with the line, nothing added.
        let (status, err) = import(&srv, &token, "dst", &body);
        assert_eq!(status, 400, "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert_eq!(export(&srv, &token, "dst").1.len(), 3);

        // A bad third line: nothing, or with partial=true the two before it.
        let bad = "{\"a\": 1}\n\n{\"a\": 2}\n{\"a\": oops}\n{\"a\": 4}\n";
        let (status, err) = import(&srv, &token, "bad", bad);
        assert_eq!(status, 400, "{err}");
        assert!(err.to_string().contains("line 4"), "{err}");
        assert!(err.to_string().contains("nothing was imported"), "{err}");
        assert_eq!(export(&srv, &token, "bad").1.len(), 0);
        let r = srv.request(
            "POST",
            "/api/import/bad?partial=true",
            &[("Authorization", &format!("Bearer {token}"))],
            bad,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let reply = r.json();
        assert_eq!(reply["imported"], 2);
        assert_eq!(reply["stopped_at_line"], 4);
        assert_eq!(export(&srv, &token, "bad").1.len(), 2);
        let (status, err) = import(&srv, &token, "bad", "[1, 2]\n");
        assert_eq!(status, 400);
        assert!(err.to_string().contains("JSON object"), "{err}");

        // CSV: a header row, typed cells, an id column.
        let r = srv.request(
            "POST",
            "/api/import/people",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("Content-Type", "text/csv"),
            ],
            "id,name,age,member\np1,\"Doe, Jane\",41,true\np2,Bob,,false\n",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["imported"], 2);
        let (_, people) = export(&srv, &token, "people");
        assert_eq!(people[0]["name"]["value"], "Doe, Jane");
        assert_eq!(people[0]["age"], json!({"type": "Integer", "value": 41}));
        assert_eq!(
            people[0]["member"],
            json!({"type": "Boolean", "value": true})
        );
        assert!(people[1].get("age").is_none(), "an empty cell is no field");

        // Acknowledged imports survive kill -9.
        srv.restart();
        let token = srv.token();
        assert_eq!(export(&srv, &token, "dst").1, out);
        assert_eq!(export(&srv, &token, "bad").1.len(), 2);
        assert_eq!(export(&srv, &token, "nowhere").0, 404);
    }
);

both_runtimes!(export_and_import_subcommands_round_trip, |rt: Runtime| {
    let srv = TestServer::start(rt);
    let token = srv.token();
    for n in 0..5 {
        srv.insert(
            "src",
            &json!({"n": n, "at": {"type": "DateTime", "value": "2026-12-06T12:00:00Z"}}),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("src.jsonl");
    let (url, key) = (srv.base_url(), tidepool_tests::API_KEY);
    let file_arg = file.to_str().unwrap();
    let (ok, out, err) =
        rt.subcommand(&["export", "src", file_arg, "--url", &url, "--api-key", key]);
    assert!(ok, "{err}");
    assert!(out.contains("\"records\":5"), "{out}");
    let (ok, out, err) =
        rt.subcommand(&["import", "copy", file_arg, "--url", &url, "--api-key", key]);
    assert!(ok, "{err}");
    assert!(out.contains('5'), "{out}");
    let strip = |mut v: Vec<Value>| {
        for r in &mut v {
            r.as_object_mut().unwrap().remove("id");
        }
        v.sort_by_key(|r| r["n"].to_string());
        v
    };
    let (_, a) = export(&srv, &token, "src");
    let (_, b) = export(&srv, &token, "copy");
    assert_eq!(strip(a), strip(b), "types and values round-trip");
    // A bad line: the import fails naming it, and nothing lands.
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"n\": 1}\nnot json\n").unwrap();
    let (ok, _, err) = rt.subcommand(&[
        "import",
        "other",
        bad.to_str().unwrap(),
        "--url",
        &url,
        "--api-key",
        key,
    ]);
    assert!(!ok && err.contains("line 2"), "{err}");
    assert_eq!(export(&srv, &token, "other").1.len(), 0);
    // An existing file is not overwritten.
    let (ok, _, err) = rt.subcommand(&["export", "src", file_arg, "--url", &url, "--api-key", key]);
    assert!(!ok && err.contains("exists"), "{err}");
});
