//! Streaming connections (WebSocket, SSE) on tidepool-std: one small reader
//! thread per stream, and a small pool of workers that step every stream and
//! write what it releases, so an event fanned out to a thousand subscribers
//! wakes a few threads, not a thousand.
//!
//! ```text
//!  reader thread (64 KiB stack): read ─▶ hand the buffer over ─▶ schedule
//!  waker (hub, durability)      ────────────────────────────▶ schedule
//!  service thread: deadlines, sockets writable again ─▶ schedule
//!                                                        │
//!  workers (a few): step the connection, send without blocking ◀┘
//!                   (what the socket does not take waits; the service
//!                    thread reschedules the stream once it is writable)
//! ```
//!
//! A reader thread never allocates: it reads into one buffer, hands it to the
//! workers and waits for it back (so it reads at most one buffer ahead). A
//! thread that allocates gets its own allocator heap, tens of KiB; one that
//! only reads costs the few stack pages it touches.

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::SendFlags;
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;
use tidepool_core::conn::{Connection, Effect};
use tidepool_core::driver;
use tidepool_core::time::Timestamp;
use tidepool_core::timers::TimerTable;
use tidepool_host::{now, Host, Transport};

/// Stack of a stream's reader thread: it only reads and frames input.
const READER_STACK: usize = 64 * 1024;
/// Bytes a reader reads at a time.
const READ_BYTES: usize = 8 * 1024;
/// How often blocked sockets are checked for room while any exist.
const BLOCKED_POLL: Duration = Duration::from_millis(5);

type StreamId = u64;

/// One streaming connection.
struct Stream {
    id: StreamId,
    state: Mutex<State>,
    /// The reader's buffer, passed back and forth.
    input: Mutex<Input>,
    input_back: Condvar,
    socket: TcpStream,
    /// In the workers' queue (scheduling twice is pointless).
    queued: AtomicBool,
    /// A wake-up (hub events, durability) came since the last step.
    notified: AtomicBool,
}

struct State {
    conn: Connection,
    /// TLS or nothing between the socket and the connection.
    transport: Transport,
    /// What the connection released in the current step (before `transport`).
    released: Vec<u8>,
    /// Bytes for the socket, not yet taken by it.
    unsent: Vec<u8>,
    closed: bool,
}

/// The buffer the reader fills and a worker consumes.
#[derive(Default)]
struct Input {
    /// Read, not yet handled (empty: the peer closed).
    full: Option<Vec<u8>>,
    /// Handled, back for the next read.
    empty: Option<Vec<u8>>,
    /// The stream is over: the reader stops.
    closed: bool,
}

impl Stream {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the service thread is told.
enum Service {
    /// The stream's next deadline (or none).
    Deadline(Arc<Stream>, Option<Timestamp>),
    /// The stream's socket is full: schedule it again when writable.
    Blocked(Arc<Stream>),
    /// The stream is gone.
    Forget(StreamId),
}

/// The pool serving every stream of a server.
pub struct Streams {
    host: Arc<Host>,
    ready: Sender<Arc<Stream>>,
    service: Sender<Service>,
    next: AtomicU64,
}

impl Streams {
    /// Starts the workers and the service thread.
    pub fn start(host: Arc<Host>, workers: usize) -> io::Result<Arc<Streams>> {
        // Bounded, so the reader threads' sends never allocate: a stream is in
        // the queue at most once, and there are at most `capacity` of them.
        let capacity = host.lock().config().max_connections.max(1) + 64;
        let (ready, ready_rx) = bounded::<Arc<Stream>>(capacity);
        let (service, service_rx) = unbounded::<Service>();
        let streams = Arc::new(Streams {
            host,
            ready,
            service,
            next: AtomicU64::new(1),
        });
        for i in 0..workers.max(1) {
            let (s, rx) = (streams.clone(), ready_rx.clone());
            thread::Builder::new()
                .name(format!("tidepool-stream-{i}"))
                .spawn(move || {
                    for stream in rx {
                        stream.queued.store(false, Ordering::Release);
                        s.run(&stream);
                    }
                })?;
        }
        let s = streams.clone();
        thread::Builder::new()
            .name("tidepool-stream-service".into())
            .spawn(move || s.service(&service_rx))?;
        Ok(streams)
    }

    fn schedule(&self, stream: &Arc<Stream>) {
        if !stream.queued.swap(true, Ordering::AcqRel) {
            let _ = self.ready.send(stream.clone());
        }
    }

    /// Takes over a connection that switched to WebSocket or SSE. `waker` is
    /// the connection's registered waker; `wakeups` fire it from now on.
    pub fn adopt(
        self: &Arc<Self>,
        conn: Connection,
        socket: TcpStream,
        transport: Transport,
        wakeups: &crate::Wakeup,
    ) -> io::Result<()> {
        let reader_socket = socket.try_clone()?;
        // The request loop read with a timeout (its deadlines); the reader
        // waits for input as long as the stream lives (the connection's own
        // timers end it), so a quiet client is not mistaken for a closed one.
        reader_socket.set_read_timeout(None)?;
        let stream = Arc::new(Stream {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            state: Mutex::new(State {
                conn,
                transport,
                released: Vec::new(),
                unsent: Vec::new(),
                closed: false,
            }),
            input: Mutex::new(Input::default()),
            input_back: Condvar::new(),
            socket,
            queued: AtomicBool::new(false),
            notified: AtomicBool::new(false),
        });
        // Wake-ups now schedule the stream on the pool.
        {
            let (s, st) = (Arc::downgrade(self), Arc::downgrade(&stream));
            wakeups.redirect(Arc::new(move || {
                if let (Some(s), Some(st)) = (s.upgrade(), st.upgrade()) {
                    st.notified.store(true, Ordering::Release);
                    s.schedule(&st);
                }
            }));
        }
        self.schedule(&stream);
        let (s, st) = (self.clone(), stream.clone());
        let buf = vec![0u8; READ_BYTES];
        thread::Builder::new()
            .name("tidepool-reader".into())
            .stack_size(READER_STACK)
            .spawn(move || s.read_loop(&st, reader_socket, buf))?;
        Ok(())
    }

    /// The reader: fills its buffer, hands it over, waits for it back. It
    /// ends at EOF or when the stream is closed; the worker ends the
    /// connection.
    fn read_loop(&self, stream: &Arc<Stream>, mut socket: TcpStream, mut buf: Vec<u8>) {
        let input = || stream.input.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            buf.resize(READ_BYTES, 0);
            let n = loop {
                match socket.read(&mut buf) {
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted
                                | io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                        ) => {}
                    other => break other.unwrap_or(0),
                }
            };
            buf.truncate(n);
            input().full = Some(buf);
            self.schedule(stream);
            if n == 0 {
                return;
            }
            let mut inp = input();
            buf = loop {
                if inp.closed {
                    return;
                }
                if let Some(b) = inp.empty.take() {
                    break b;
                }
                inp = stream
                    .input_back
                    .wait(inp)
                    .unwrap_or_else(|p| p.into_inner());
            };
        }
    }

    /// Hands what the reader read to the connection and the buffer back.
    fn take_input(stream: &Stream, st: &mut State) {
        let full = stream
            .input
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .full
            .take();
        let Some(mut bytes) = full else {
            return;
        };
        if bytes.is_empty() {
            st.conn.handle_eof();
        } else if st.transport.receive(&bytes, &mut st.conn, now()).is_err() {
            // Not TLS as it should be: the alert goes out, then the stream ends.
            st.transport.close();
            st.conn.handle_eof();
        }
        bytes.clear();
        stream.input.lock().unwrap_or_else(|p| p.into_inner()).empty = Some(bytes);
        stream.input_back.notify_one();
    }

    /// The stream is over: the reader stops, the server forgets it.
    fn close(&self, stream: &Arc<Stream>, st: &mut State) {
        if st.closed {
            return;
        }
        st.closed = true;
        stream
            .input
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        stream.input_back.notify_one();
        // Wakes the reader out of its read.
        let _ = stream.socket.shutdown(Shutdown::Both);
        let _ = self.service.send(Service::Forget(stream.id));
        self.host.connection_closed(st.conn.id());
    }

    /// One step of a stream on a worker.
    fn run(&self, stream: &Arc<Stream>) {
        let mut st = stream.lock();
        if st.closed {
            return;
        }
        Self::take_input(stream, &mut st);
        if stream.notified.swap(false, Ordering::AcqRel) {
            st.conn.handle_notify();
        }
        // While the socket is full nothing more is released: the connection's
        // own bounded queue and the hub's budget absorb the backlog (and cut a
        // subscriber off that stays behind), as when a runtime's write blocks.
        if !self.send(stream, &mut st) {
            return;
        }
        if st.conn.poll_timeout().is_some_and(|t| t <= now()) {
            st.conn.handle_timeout(now());
        }
        let state = &mut *st;
        let step = step(&self.host, &mut state.conn, &mut state.released);
        if step.closed {
            state.transport.close();
        }
        state.transport.seal(&mut state.released, &mut state.unsent);
        self.send(stream, &mut st);
        if step.closed && st.unsent.is_empty() {
            self.close(stream, &mut st);
            return;
        }
        if let Some(lsn) = step.durable_after {
            let (s, st2) = (stream.clone(), Arc::downgrade(stream));
            let ready = self.ready.clone();
            self.host.durability.notify_next(Arc::new(move || {
                if let Some(st2) = st2.upgrade() {
                    if !st2.queued.swap(true, Ordering::AcqRel) {
                        let _ = ready.send(st2);
                    }
                }
            }));
            if self.host.durability.lsn() >= lsn {
                drop(st);
                self.schedule(&s);
                return;
            }
        }
        let deadline = st.conn.poll_timeout();
        let _ = self
            .service
            .send(Service::Deadline(stream.clone(), deadline));
    }

    /// Sends what the socket takes now; `false` if bytes are left (the stream
    /// is then rescheduled once the socket has room).
    fn send(&self, stream: &Arc<Stream>, st: &mut State) -> bool {
        while !st.unsent.is_empty() {
            match rustix::net::send(
                &stream.socket,
                &st.unsent,
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => {
                    st.unsent.drain(..n);
                }
                Err(rustix::io::Errno::AGAIN) => {
                    let _ = self.service.send(Service::Blocked(stream.clone()));
                    return false;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => {
                    // The peer is gone: nothing more can be sent.
                    st.conn.handle_eof();
                    st.unsent.clear();
                }
            }
        }
        true
    }

    /// The service thread: fires deadlines, and reschedules full sockets once
    /// they have room.
    fn service(&self, rx: &Receiver<Service>) {
        let mut streams: HashMap<StreamId, Arc<Stream>> = HashMap::new();
        let mut timers: TimerTable<StreamId> = TimerTable::default();
        let mut blocked: Vec<Arc<Stream>> = Vec::new();
        loop {
            // Wait for news, a deadline, or (while sockets are full) a short poll.
            let until_deadline = timers
                .next()
                .map(|t| t.since(now()))
                .unwrap_or(Duration::from_secs(3600));
            let wait = if blocked.is_empty() {
                until_deadline
            } else {
                until_deadline.min(BLOCKED_POLL)
            };
            let first = if blocked.is_empty() {
                rx.recv_timeout(wait).ok()
            } else {
                rx.try_recv().ok()
            };
            for msg in first.into_iter().chain(rx.try_iter()) {
                match msg {
                    Service::Deadline(s, t) => {
                        timers.set(s.id, t);
                        streams.insert(s.id, s);
                    }
                    Service::Blocked(s) => blocked.push(s),
                    Service::Forget(id) => {
                        timers.cancel(id);
                        streams.remove(&id);
                        blocked.retain(|s| s.id != id);
                    }
                }
            }
            if !blocked.is_empty() {
                let timeout = Timespec {
                    tv_sec: 0,
                    tv_nsec: wait.min(BLOCKED_POLL).as_nanos() as i64,
                };
                let mut fds: Vec<PollFd<'_>> = blocked
                    .iter()
                    .map(|s| PollFd::new(&s.socket, PollFlags::OUT))
                    .collect();
                let _ = rustix::event::poll(&mut fds, Some(&timeout));
                let writable: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
                drop(fds);
                let mut i = 0;
                blocked.retain(|s| {
                    let keep = !writable[i];
                    i += 1;
                    if !keep {
                        self.schedule(s);
                    }
                    keep
                });
            }
            for id in timers.expired(now()) {
                if let Some(s) = streams.get(&id) {
                    self.schedule(s);
                }
            }
        }
    }
}

/// Steps the connection and performs its effects until none are left.
fn step(host: &Host, conn: &mut Connection, out: &mut Vec<u8>) -> driver::Step {
    let mut shared: &Host = host;
    loop {
        let step = driver::step(conn, &mut shared, now(), out);
        if step.effects.is_empty() {
            return step;
        }
        for effect in step.effects {
            match effect {
                Effect::ReadHistory { after, .. } => {
                    let history = host.read_history(after);
                    host.with_server(|s| conn.handle_history(s, history));
                }
            }
        }
    }
}
