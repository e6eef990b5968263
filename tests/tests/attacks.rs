//! The adversarial run's attacks (issue 14, findings 1-3), replayed against
//! real server processes on both runtimes. Each checks that the attack is
//! refused the documented way, that other clients are still served while it
//! runs (health answers), and that the server's peak memory stays within a
//! stated bound.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tidepool_tests::{both_runtimes, HttpReply, Runtime, TestServer};

/// The server's peak resident memory so far, in MiB (`VmHWM`).
fn peak_rss_mib(srv: &TestServer) -> u64 {
    let pid = srv.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmHWM");
    kib / 1024
}

/// Health requests on fresh connections, one after another, until `stop`:
/// how long each took.
fn health_while(srv: &TestServer, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Duration>> {
    let addr = srv.addr;
    thread::spawn(move || {
        let mut took = Vec::new();
        while !stop.load(Ordering::Relaxed) || took.is_empty() {
            let start = Instant::now();
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20))).ok();
            s.write_all(b"GET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("write");
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            let r = HttpReply::parse(&out).expect("a health response");
            assert_eq!(r.status, 200);
            took.push(start.elapsed());
            thread::sleep(Duration::from_millis(20));
        }
        took
    })
}

/// Health stayed responsive: every request answered within a second (the
/// attacks held it for 3 s before), and the typical one within 100 ms.
#[track_caller]
fn assert_responsive(mut took: Vec<Duration>) {
    took.sort();
    let median = took[took.len() / 2];
    let worst = took[took.len() - 1];
    eprintln!("health during the attack: median {median:?}, worst {worst:?}");
    assert!(
        median < Duration::from_millis(100) && worst < Duration::from_secs(1),
        "health during the attack: median {median:?}, worst {worst:?} over {} requests",
        took.len()
    );
}

/// Reads one response (the server may close right after it).
fn read_reply(s: &mut TcpStream) -> Option<HttpReply> {
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(r) = HttpReply::parse(&out) {
            return Some(r);
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return HttpReply::parse(&out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

both_runtimes!(
    large_bodies_without_a_token_are_refused_from_their_head,
    |rt: Runtime| {
        let srv = TestServer::start(rt);
        let before = peak_rss_mib(&srv);
        let stop = Arc::new(AtomicBool::new(false));
        let health = health_while(&srv, stop.clone());
        // 24 uploads of "64 MiB" with no token, and a 60 MiB body to the
        // token exchange: each is answered from its head, before the body.
        let mut socks = Vec::new();
        for i in 0..25 {
            let mut s = TcpStream::connect(srv.addr).expect("connect");
            let (target, len) = if i == 24 {
                ("/api/auth/token", 60 << 20)
            } else {
                ("/api/insert/c", 64 << 20)
            };
            let head = format!(
                "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\nContent-Length: {len}\r\n\r\n"
            );
            s.write_all(head.as_bytes()).expect("head");
            socks.push((s, target));
        }
        for (s, target) in &mut socks {
            let r = read_reply(s).unwrap_or_else(|| panic!("{target}: no answer before the body"));
            let expect = if *target == "/api/auth/token" {
                413
            } else {
                401
            };
            assert_eq!(r.status, expect, "{target}: {}", r.text());
            // The server closes: the body is never read.
            let mut rest = [0u8; 1];
            assert!(
                matches!(s.read(&mut rest), Ok(0) | Err(_)),
                "{target}: still open"
            );
        }
        stop.store(true, Ordering::Relaxed);
        assert_responsive(health.join().expect("health thread"));
        let grew = peak_rss_mib(&srv).saturating_sub(before);
        eprintln!("peak memory grew {grew} MiB");
        assert!(grew < 32, "peak memory grew {grew} MiB");
    }
);

both_runtimes!(
    a_flood_of_empty_values_is_refused_without_building_it,
    |rt: Runtime| {
        let srv = TestServer::start(rt);
        let token = srv.token();
        let before = peak_rss_mib(&srv);
        // 60 MiB of MessagePack nils in one array: 63 million values.
        let n: u32 = 60 << 20;
        let mut body = vec![0xdd];
        body.extend_from_slice(&n.to_be_bytes());
        body.resize(body.len() + n as usize, 0xc0);
        let stop = Arc::new(AtomicBool::new(false));
        let health = health_while(&srv, stop.clone());
        let mut s = TcpStream::connect(srv.addr).expect("connect");
        let head = format!(
            "POST /api/insert/c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/msgpack\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).expect("head");
        s.write_all(&body).expect("body");
        let r = read_reply(&mut s).expect("an answer");
        stop.store(true, Ordering::Relaxed);
        assert_eq!(r.status, 413, "{}", r.text());
        assert!(r.text().contains("values"), "{}", r.text());
        assert_responsive(health.join().expect("health thread"));
        // The body itself is held while it arrives (60 MiB, in a buffer
        // sized from its Content-Length); what it would decode to never is.
        let grew = peak_rss_mib(&srv).saturating_sub(before);
        eprintln!("peak memory grew {grew} MiB");
        assert!(grew < 100, "peak memory grew {grew} MiB for a 60 MiB body");
        let r = srv.call(&token, "POST", "/api/insert/c", r#"{"still":"works"}"#);
        assert_eq!(r.status, 200, "{}", r.text());
    }
);

both_runtimes!(
    trickled_requests_are_cut_off_and_do_not_lock_others_out,
    |rt: Runtime| {
        let srv = TestServer::start_with(
            rt,
            &["--request-head-timeout", "2", "--request-body-timeout", "2"],
        );
        let token = srv.token();
        // 300 connections sending their head one byte every 200 ms (each
        // byte would reset an idle timer), half of them then trickling a body.
        let mut slow: Vec<(TcpStream, Vec<u8>)> = (0..300)
            .map(|i| {
                let s = TcpStream::connect(srv.addr).expect("connect");
                let msg = if i % 2 == 0 {
                    b"GET /api/health HTTP/1.1\r\nHost: slow\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec()
                } else {
                    let mut m = format!(
                        "POST /api/insert/c HTTP/1.1\r\nHost: slow\r\nAuthorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n"
                    )
                    .into_bytes();
                    // The head arrives at once; the body trickles.
                    let head = m.len();
                    m.extend(std::iter::repeat_n(b' ', 100));
                    s.try_clone().expect("clone").write_all(&m[..head]).expect("head");
                    m.drain(..head);
                    m
                };
                (s, msg)
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let health = health_while(&srv, stop.clone());
        let start = Instant::now();
        let mut at = 0;
        while start.elapsed() < Duration::from_secs(4) {
            for (s, msg) in &mut slow {
                if let Some(b) = msg.get(at) {
                    let _ = s.write_all(&[*b]);
                }
            }
            at += 1;
            thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::Relaxed);
        assert_responsive(health.join().expect("health thread"));
        // Every slow one was told 408 and closed.
        for (i, (s, _)) in slow.iter_mut().enumerate() {
            let r = read_reply(s).unwrap_or_else(|| panic!("slow connection {i}: no answer"));
            assert_eq!(r.status, 408, "slow connection {i}: {}", r.text());
            assert_eq!(r.header("connection"), Some("close"));
        }
    }
);
