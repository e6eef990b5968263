//! What loopback TCP itself costs on this machine, and so the least CPU any
//! server and client pair needs for a fan-out latency target.
//!
//! ```sh
//! cargo run --release -p tidepool-benches --bin loopback_floor -- --subscribers 11000 --within-ms 50
//! ```
//!
//! Opens `--pairs` connected loopback socket pairs and, on one thread, times
//! the two calls no fan-out can avoid: one `send` of `--bytes` to every socket
//! (which on loopback includes the kernel's receive processing), then one
//! `recv` on every peer. To keep every delivery under `--within-ms`, each of
//! `--subscribers` must be written at least once per that window, so the pair
//! of calls happens at least `subscribers × 1000 / within_ms` times a second.
//! The report gives that CPU time as a share of the machine, and the shortest
//! possible pass over all subscribers: a lower bound on delivery latency for
//! any server whose subscribers share its machine.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

struct Args {
    pairs: usize,
    bytes: usize,
    rounds: usize,
    subscribers: usize,
    within_ms: f64,
}

fn parse_args() -> Args {
    let mut a = Args {
        pairs: 5_000,
        bytes: 2_000,
        rounds: 10,
        subscribers: 11_000,
        within_ms: 50.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--pairs" => a.pairs = val().parse().expect("number"),
            "--bytes" => a.bytes = val().parse().expect("number"),
            "--rounds" => a.rounds = val().parse().expect("number"),
            "--subscribers" => a.subscribers = val().parse().expect("number"),
            "--within-ms" => a.within_ms = val().parse().expect("number"),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn main() {
    let args = parse_args();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut senders = Vec::with_capacity(args.pairs);
    let mut receivers = Vec::with_capacity(args.pairs);
    for _ in 0..args.pairs {
        let receiver = TcpStream::connect(addr).expect("connect (raise `ulimit -n`?)");
        let (sender, _) = listener.accept().expect("accept");
        sender.set_nodelay(true).expect("nodelay");
        receiver.set_nonblocking(true).expect("nonblocking");
        senders.push(sender);
        receivers.push(receiver);
    }
    let payload = vec![b'x'; args.bytes];
    let mut buf = vec![0u8; 64 * 1024];
    let (mut send_time, mut recv_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..args.rounds {
        let t = Instant::now();
        for s in &mut senders {
            s.write_all(&payload).expect("send");
        }
        send_time += t.elapsed();
        let t = Instant::now();
        for r in &mut receivers {
            let mut got = 0;
            while got < args.bytes {
                match r.read(&mut buf) {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("recv: {e}"),
                }
            }
        }
        recv_time += t.elapsed();
    }
    let calls = (args.pairs * args.rounds) as f64;
    let send_us = send_time.as_secs_f64() * 1e6 / calls;
    let recv_us = recv_time.as_secs_f64() * 1e6 / calls;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let writes_per_s = args.subscribers as f64 * 1000.0 / args.within_ms;
    let needed = writes_per_s * (send_us + recv_us) / 1e6;
    println!(
        "{} socket pairs, {} B per call: send {send_us:.2} us, recv {recv_us:.2} us",
        args.pairs, args.bytes
    );
    // Every core doing nothing but these calls still needs this long to write
    // each subscriber once: an event just missed waits about that long.
    let pass_ms = args.subscribers as f64 * (send_us + recv_us) / cores / 1000.0;
    println!(
        "{} subscribers each written at least every {} ms: {writes_per_s:.0} send+recv pairs/s = {needed:.2} of this machine's {cores} cores ({:.0}%) in those calls alone",
        args.subscribers,
        args.within_ms,
        100.0 * needed / cores
    );
    println!(
        "one pass over {} subscribers takes at least {pass_ms:.1} ms with every core in these calls and nothing else (no epoll, framing, parsing or inserts)",
        args.subscribers
    );
}
