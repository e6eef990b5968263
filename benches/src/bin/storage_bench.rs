//! Storage benchmark: raw fsync rate of the disk, durable group-commit throughput of the
//! store with 1/8/64 writer threads against redb and SQLite doing the same, recovery
//! time and peak memory for 1M records, and space amplification after compaction.
//!
//! ```text
//! cargo run --release -p tidepool-benches --bin storage_bench -- [--dir PATH] [--secs 3]
//!     [--records 1000000] [--keys 100000] [--writers 1,8,64] [--no-peers]
//! ```
//! The data directory defaults to `target/storage-bench` (on the same disk as the
//! workspace; /tmp may be a tmpfs on other machines, where fsync costs nothing).

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use tidepool_storage::{Lsn, Store, StoreOptions};

const RECORD: usize = 200;

struct Args {
    dir: PathBuf,
    secs: f64,
    records: u64,
    keys: u64,
    writers: Vec<usize>,
    peers: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/storage-bench"),
        secs: 3.0,
        records: 1_000_000,
        keys: 100_000,
        writers: vec![1, 8, 64],
        peers: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(val()),
            "--secs" => a.secs = val().parse().expect("--secs"),
            "--records" => a.records = val().parse().expect("--records"),
            "--keys" => a.keys = val().parse().expect("--keys"),
            "--writers" => {
                a.writers = val()
                    .split(',')
                    .map(|w| w.parse().expect("--writers"))
                    .collect()
            }
            "--no-peers" => a.peers = false,
            "--recover-child" => {
                recover_child(Path::new(&val()));
                std::process::exit(0);
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn fresh(dir: &Path) -> PathBuf {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    dir.to_path_buf()
}

fn record(i: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD);
    r.extend_from_slice(&i.to_le_bytes());
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while r.len() < RECORD {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.push(x as u8);
    }
    r
}

/// Raw disk: 4 KiB appends, each followed by fdatasync.
fn raw_fsync(dir: &Path, secs: f64) -> (u64, f64) {
    let path = dir.join("raw-fsync");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let block = vec![0xabu8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all_at(&block, n * 4096).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let took = start.elapsed().as_secs_f64();
    drop(f);
    let _ = fs::remove_file(path);
    (n, took)
}

/// Raw disk, the cheaper case: 4 KiB overwrites of a preallocated file + fdatasync
/// (no size change to journal), which is what the store's syncs mostly are.
fn raw_overwrite_fsync(dir: &Path, secs: f64) -> f64 {
    let path = dir.join("raw-overwrite");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let blocks = 4096u64;
    f.write_all_at(&vec![0u8; (blocks * 4096) as usize], 0)
        .unwrap();
    f.sync_all().unwrap();
    let block = vec![0xcdu8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all_at(&block, (n % blocks) * 4096).unwrap();
        f.sync_data().unwrap();
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = fs::remove_file(path);
    rate
}

/// Something that makes a group of records durable at once (runs on the committer).
trait Sink: Send {
    fn commit(&mut self, records: &[Vec<u8>]);
}

struct StoreSink {
    store: Store,
    next: u64,
}

impl Sink for StoreSink {
    fn commit(&mut self, records: &[Vec<u8>]) {
        for r in records {
            self.next += 1;
            self.store.append(Lsn(self.next), r).unwrap();
        }
        self.store.sync().unwrap();
    }
}

const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("kv");

struct RedbSink {
    db: redb::Database,
    next: u64,
}

impl Sink for RedbSink {
    fn commit(&mut self, records: &[Vec<u8>]) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(redb::Durability::Immediate).unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for r in records {
                self.next += 1;
                t.insert(self.next, r.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

struct SqliteSink {
    conn: rusqlite::Connection,
    next: i64,
}

impl Sink for SqliteSink {
    fn commit(&mut self, records: &[Vec<u8>]) {
        let tx = self.conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO kv (k, v) VALUES (?1, ?2)")
                .unwrap();
            for r in records {
                self.next += 1;
                st.execute(rusqlite::params![self.next, r]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
}

fn open_sink(kind: &str, dir: &Path) -> Box<dyn Sink> {
    match kind {
        "tidepool" => {
            let (store, _) = Store::open(StoreOptions::new(dir)).unwrap();
            Box::new(StoreSink { store, next: 0 })
        }
        "redb" => Box::new(RedbSink {
            db: redb::Database::create(dir.join("bench.redb")).unwrap(),
            next: 0,
        }),
        "sqlite" => {
            let conn = rusqlite::Connection::open(dir.join("bench.sqlite")).unwrap();
            let mode: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode.to_lowercase(), "wal");
            conn.execute_batch(
                "PRAGMA synchronous=FULL; CREATE TABLE kv (k INTEGER PRIMARY KEY, v BLOB);",
            )
            .unwrap();
            Box::new(SqliteSink { conn, next: 0 })
        }
        _ => unreachable!(),
    }
}

/// One writer's outstanding record: set `done` and unpark `thread` when durable.
struct Ticket {
    done: AtomicBool,
    thread: Thread,
}

#[derive(Default)]
struct Queue {
    records: Vec<Vec<u8>>,
    tickets: Vec<Arc<Ticket>>,
    committer_waiting: bool,
    groups: u64,
    stop: bool,
}

struct GroupResult {
    records: u64,
    secs: f64,
    groups: u64,
}

/// `writers` threads each hand one record at a time to a committer thread and wait
/// until it is durable; the committer takes everything pending, commits it as one
/// group, and wakes exactly the writers of that group (park/unpark, so a commit does
/// not wake the writers still waiting for the next one).
fn group_commit(mut sink: Box<dyn Sink>, writers: usize, secs: f64) -> GroupResult {
    let q = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
    let committer = {
        let q = q.clone();
        thread::spawn(move || {
            let (lock, work) = &*q;
            let mut records = Vec::new();
            let mut tickets = Vec::new();
            loop {
                {
                    let mut g = lock.lock().unwrap();
                    while g.records.is_empty() && !g.stop {
                        g.committer_waiting = true;
                        g = work.wait(g).unwrap();
                        g.committer_waiting = false;
                    }
                    if g.records.is_empty() {
                        return;
                    }
                    std::mem::swap(&mut records, &mut g.records);
                    std::mem::swap(&mut tickets, &mut g.tickets);
                    g.groups += 1;
                }
                sink.commit(&records);
                records.clear();
                for t in tickets.drain(..) {
                    t.done.store(true, Ordering::Release);
                    t.thread.unpark();
                }
            }
        })
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let q = q.clone();
            thread::spawn(move || {
                let (lock, work) = &*q;
                let ticket = Arc::new(Ticket {
                    done: AtomicBool::new(false),
                    thread: thread::current(),
                });
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let rec = record((w as u64) << 40 | n);
                    ticket.done.store(false, Ordering::Relaxed);
                    {
                        let mut g = lock.lock().unwrap();
                        g.records.push(rec);
                        g.tickets.push(ticket.clone());
                        if g.committer_waiting {
                            work.notify_one();
                        }
                    }
                    while !ticket.done.load(Ordering::Acquire) {
                        thread::park();
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    let records: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    {
        let (lock, work) = &*q;
        lock.lock().unwrap().stop = true;
        work.notify_all();
    }
    committer.join().unwrap();
    let groups = q.0.lock().unwrap().groups;
    GroupResult {
        records,
        secs,
        groups,
    }
}

fn vm_hwm_kb() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs in a child process so its peak memory is recovery's alone.
fn recover_child(dir: &Path) {
    let start = Instant::now();
    let (store, rec) = Store::open(StoreOptions::new(dir)).unwrap();
    let mut n = 0u64;
    let mut sum = 0u64;
    for (_, p) in rec.batches() {
        n += 1;
        sum = sum.wrapping_add(u64::from(p.first().copied().unwrap_or(0)));
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(rec);
    drop(store);
    println!("{n} {elapsed} {} {sum}", vm_hwm_kb());
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn main() {
    let args = parse_args();
    let t0 = Instant::now();
    fs::create_dir_all(&args.dir).unwrap();
    let mut out = String::new();
    let mut line = |s: String| {
        println!("{s}");
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "Data directory: {}",
        args.dir.canonicalize().unwrap().display()
    ));
    line(format!(
        "Machine: {} cores; records of {RECORD} bytes; {} s per group-commit run\n",
        thread::available_parallelism().map_or(0, |n| n.get()),
        args.secs
    ));

    // The disk's fsync rate drifts a lot between minutes on a shared VM, so each
    // writer count runs in rounds that measure the raw disk, the store and the peers
    // back to back, and ratios use the raw rate measured alongside.
    const ROUNDS: usize = 3;
    let slice = args.secs / ROUNDS as f64;
    let kinds: &[&str] = if args.peers {
        &["tidepool", "redb", "sqlite"]
    } else {
        &["tidepool"]
    };
    line(
        "| workload | tidepool | redb (Durability::Immediate) | SQLite (WAL, synchronous=FULL) |"
            .into(),
    );
    line("|---|---|---|---|".into());
    let mut rows = Vec::new();
    let (mut raw_n, mut raw_s) = (0u64, 0f64);
    let mut raw_rates = Vec::new();
    let overwrite = raw_overwrite_fsync(&fresh(&args.dir.join("raw")), slice);
    for &w in &args.writers {
        let (mut wn, mut ws) = (0u64, 0f64);
        let mut acc = vec![(0u64, 0f64, 0u64); kinds.len()];
        for _ in 0..ROUNDS {
            let (n, t) = raw_fsync(&fresh(&args.dir.join("raw")), slice);
            raw_rates.push(n as f64 / t);
            wn += n;
            ws += t;
            for (i, &kind) in kinds.iter().enumerate() {
                let dir = fresh(&args.dir.join(format!("gc-{kind}-{w}")));
                let r = group_commit(open_sink(kind, &dir), w, slice);
                acc[i].0 += r.records;
                acc[i].1 += r.secs;
                acc[i].2 += r.groups;
                let _ = fs::remove_dir_all(&dir);
            }
        }
        raw_n += wn;
        raw_s += ws;
        let raw = wn as f64 / ws;
        let mut cells = Vec::new();
        for (i, &kind) in kinds.iter().enumerate() {
            let (records, secs, groups) = acc[i];
            let rps = records as f64 / secs;
            let mut cell = format!(
                "{rps:.0} rec/s, {:.2} MB/s, {:.1} rec/commit",
                rps * RECORD as f64 / 1e6,
                records as f64 / groups.max(1) as f64
            );
            if kind == "tidepool" {
                cell.push_str(&format!(
                    " (**{:.1}x** raw fsync of {raw:.0}/s measured alongside)",
                    rps / raw
                ));
            } else {
                cell.push_str(&format!(" ({:.1}x raw)", rps / raw));
            }
            cells.push(cell);
        }
        cells.resize(3, String::new());
        rows.push(format!(
            "| durable commits, {w} writer{} | {} |",
            if w == 1 { "" } else { "s" },
            cells.join(" | ")
        ));
    }
    let lo = raw_rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = raw_rates.iter().copied().fold(0.0, f64::max);
    line(format!(
        "| raw disk: 4 KiB append + fdatasync | {:.0} fsync/s (rounds ranged {lo:.0} to {hi:.0}/s) | | |",
        raw_n as f64 / raw_s
    ));
    line(format!(
        "| raw disk: 4 KiB overwrite of a preallocated file + fdatasync | {overwrite:.0} fsync/s (measured once) | | |"
    ));
    for r in rows {
        line(r);
    }

    // Recovery of N records, measured in a child process.
    let dir = fresh(&args.dir.join("recovery"));
    {
        let (mut store, _) = Store::open(StoreOptions::new(&dir)).unwrap();
        for i in 1..=args.records {
            store.append(Lsn(i), &record(i)).unwrap();
            if i % 10_000 == 0 {
                store.sync().unwrap();
            }
        }
        store.close().unwrap();
    }
    let disk = dir_bytes(&dir);
    let child = Command::new(std::env::current_exe().unwrap())
        .arg("--recover-child")
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&child.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    assert!(
        child.status.success() && f.len() == 4,
        "recovery child failed: {text} {}",
        String::from_utf8_lossy(&child.stderr)
    );
    assert_eq!(f[0].parse::<u64>().unwrap(), args.records);
    let secs: f64 = f[1].parse().unwrap();
    let hwm: u64 = f[2].parse().unwrap();
    line(format!(
        "| recovery: open + replay {} records ({:.0} MB of segments) | {:.3} s, peak RSS (VmHWM) {:.0} MB | | |",
        args.records,
        disk as f64 / 1e6,
        secs,
        hwm as f64 / 1024.0
    ));
    let _ = fs::remove_dir_all(&dir);

    // Space amplification: write every key, overwrite it 3 times, snapshot.
    let dir = fresh(&args.dir.join("space"));
    {
        let mut o = StoreOptions::new(&dir);
        o.history_retention_bytes = 0;
        let (mut store, _) = Store::open(o).unwrap();
        let mut lsn = 0;
        for round in 0..4u64 {
            for k in 0..args.keys {
                lsn += 1;
                let mut r = record(k << 2 | round);
                r[..8].copy_from_slice(&k.to_le_bytes());
                store.append(Lsn(lsn), &r).unwrap();
            }
            store.sync().unwrap();
        }
        let before = dir_bytes(&dir);
        let mut w = store.begin_snapshot(Lsn(lsn)).unwrap();
        let mut chunk = Vec::with_capacity(64 << 10);
        let mut live = 0u64;
        for k in 0..args.keys {
            let mut r = record(k << 2 | 3);
            r[..8].copy_from_slice(&k.to_le_bytes());
            live += r.len() as u64;
            chunk.extend_from_slice(&r);
            if chunk.len() >= 64 << 10 {
                w.write_chunk(&chunk).unwrap();
                chunk.clear();
            }
        }
        w.write_chunk(&chunk).unwrap();
        store.install_snapshot(w.finish().unwrap()).unwrap();
        store.close().unwrap();
        let after = dir_bytes(&dir);
        line(format!(
            "| space: {} keys x {RECORD} B, each overwritten 3x, then snapshot (history retention 0) | live/disk = {:.3} ({:.1} MB live, {:.1} MB on disk; {:.1} MB before compaction) | | |",
            args.keys,
            live as f64 / after as f64,
            live as f64 / 1e6,
            after as f64 / 1e6,
            before as f64 / 1e6
        ));
    }
    let _ = fs::remove_dir_all(&dir);
    line(format!(
        "\nTotal bench time: {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let _ =
        File::create(args.dir.join("last-run.md")).and_then(|mut f| f.write_all(out.as_bytes()));
}
