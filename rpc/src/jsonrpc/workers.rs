//! The fixed pool of threads that run method calls for one server.
//!
//! The event loop never blocks, but methods do (they wait on the reactors), so each
//! complete request is handed here as bytes; a worker parses it, runs it through the
//! [`MethodTable`] and hands back the reply bytes, waking the loop through a socket
//! pair it `poll`s. Parsing happens here, not in the loop, so that at most one parsed
//! request per worker exists at a time (a parsed value can be many times its text).

use super::method_table::{error_response, MethodTable};
use super::RpcError;
use serde_json::Value;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

/// One complete request, as sent.
struct Job {
    conn: u64,
    frame: Vec<u8>,
}

/// What to do with a connection once its request has run.
pub(super) struct Done {
    pub conn: u64,
    /// The reply line (ending in a newline); `None` for notifications.
    pub reply: Option<Vec<u8>>,
    /// The request was not JSON after all: the stream cannot be resynchronised.
    pub close: bool,
}

pub(super) struct Workers {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    wake: UnixStream,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    pub fn start(
        count: usize,
        table: Arc<MethodTable>,
        max_batch: usize,
        name: &str,
    ) -> io::Result<Workers> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (done_tx, done) = mpsc::channel();
        let (wake, wake_tx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let (jobs_rx, done_tx) = (jobs_rx.clone(), done_tx.clone());
            let (table, wake_tx) = (table.clone(), wake_tx.try_clone()?);
            threads.push(
                thread::Builder::new()
                    .name(format!("{name}-w{i}"))
                    .spawn(move || worker(&jobs_rx, &done_tx, &wake_tx, &table, max_batch))?,
            );
        }
        Ok(Workers {
            jobs: Some(jobs_tx),
            done,
            wake,
            threads,
        })
    }

    /// Queues a request; its [`Done`] comes back through [`Workers::take_done`].
    pub fn submit(&self, conn: u64, frame: Vec<u8>) {
        if let Some(jobs) = &self.jobs {
            // Workers only exit once `jobs` is dropped, so this cannot fail.
            let _ = jobs.send(Job { conn, frame });
        }
    }

    /// Readable when [`Workers::take_done`] has something.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    pub fn take_done(&self) -> Vec<Done> {
        let mut buf = [0u8; 256];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.done.try_iter().collect()
    }

    /// Lets the workers finish their queue and waits for them.
    pub fn stop(mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(
    jobs: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
    wake: &UnixStream,
    table: &MethodTable,
    max_batch: usize,
) {
    loop {
        let job = {
            // Nothing is left inconsistent by a panic while receiving.
            let jobs = jobs.lock().unwrap_or_else(PoisonError::into_inner);
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let conn = job.conn;
        let result = run(job.frame, table, max_batch);
        if done.send(Done { conn, ..result }).is_err() {
            return;
        }
        // Non-blocking; a full socket already holds a wake-up.
        let _ = (&*wake).write(&[1]);
    }
}

fn run(frame: Vec<u8>, table: &MethodTable, max_batch: usize) -> Done {
    let done = |reply: Option<Value>, close| Done {
        conn: 0,
        reply: reply.map(|r| line(&r)),
        close,
    };
    let message: Value = match serde_json::from_slice(&frame) {
        Ok(v) => v,
        Err(e) => {
            return done(
                Some(error_response(Value::Null, RpcError::parse_error(e))),
                true,
            )
        }
    };
    drop(frame);
    if let Value::Array(batch) = &message {
        if batch.len() > max_batch {
            let e = RpcError::invalid_request(format!(
                "a batch of {} requests exceeds the limit of {max_batch}",
                batch.len()
            ));
            return done(Some(error_response(Value::Null, e)), false);
        }
    }
    // Handlers' panics are caught per call; this only guards the dispatch rules.
    let reply = catch_unwind(AssertUnwindSafe(|| table.handle(message))).unwrap_or_else(|_| {
        Some(error_response(
            Value::Null,
            RpcError::internal("request dispatch panicked"),
        ))
    });
    done(reply, false)
}

/// One response followed by a newline, so that line-oriented tools (`nc -U`,
/// `socat`, `jq`) see one response per line.
pub(super) fn line(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|e| {
        let e = error_response(Value::Null, RpcError::internal(format!("reply: {e}")));
        e.to_string().into_bytes()
    });
    bytes.push(b'\n');
    bytes
}
