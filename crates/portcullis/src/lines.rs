//! Lines written by a thread of their own, in batches: the audit log and the logs. A
//! request never waits on a disk or a pipe (a container's stderr is a pipe its runtime
//! may read late): lines go through a bounded queue, and when the writer falls behind
//! the lines that do not fit are dropped, and the caller counts them.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 65_536;

/// The writer waits this long after each write before it takes the next batch. Under
/// load the queue fills meanwhile and goes out in one write, and a sender never has
/// to wake a parked writer (a futex call and a context switch for every line, which
/// made the audit log cost more CPU than the request it records).
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// The writer's buffer: a batch of about 180 audit events per write.
const WRITE_BUFFER: usize = 64 * 1024;

/// Where a writer's lines go.
pub trait Sink: Send + 'static {
    /// Opens the destination: at the start, and again when asked to reopen it.
    fn open(&mut self) -> std::io::Result<Box<dyn Write + Send>>;
    /// Writing or reopening failed (the old destination stays in use).
    fn failed(&self, error: &std::io::Error);
    /// A line to add after each batch, if any: the logs say how many were dropped.
    fn after_batch(&mut self) -> Option<Vec<u8>> {
        None
    }
}

enum Message {
    Line(Vec<u8>),
    /// Write everything queued before this, then say so.
    Flush(std::sync::mpsc::Sender<()>),
}

pub struct LineWriter {
    queue: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
}

impl LineWriter {
    /// Opens the sink and starts the thread `name` that writes to it.
    pub fn start(name: &str, mut sink: impl Sink) -> std::io::Result<LineWriter> {
        let out = sink.open()?;
        let (queue, rx) = sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_loop(rx, sink, out, flag))?;
        Ok(LineWriter { queue, reopen })
    }

    /// Queues a line (with its newline); never waits. False when it was dropped.
    pub fn push(&self, line: Vec<u8>) -> bool {
        match self.queue.try_send(Message::Line(line)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Reopens the destination before the next write (SIGHUP, after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Waits (up to `timeout`) until every line queued so far is written: at exit, so
    /// that the last lines are not lost with the process. False if that took too long,
    /// as when nobody reads the destination and the queue stays full.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (done, written) = std::sync::mpsc::channel();
        let mut message = Message::Flush(done);
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        written
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

fn write_loop(
    rx: Receiver<Message>,
    mut sink: impl Sink,
    out: Box<dyn Write + Send>,
    reopen: Arc<AtomicBool>,
) {
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, out);
    while let Ok(first) = rx.recv() {
        if reopen.swap(false, Ordering::Relaxed) {
            let _ = out.flush();
            match sink.open() {
                Ok(new) => out = std::io::BufWriter::with_capacity(WRITE_BUFFER, new),
                Err(e) => sink.failed(&e),
            }
        }
        // Everything queued goes out as one batch, then one flush.
        let mut flushed = Vec::new();
        let mut result = Ok(());
        for message in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match message {
                Message::Line(line) => result = result.and(out.write_all(&line)),
                Message::Flush(done) => flushed.push(done),
            }
        }
        if let Some(line) = sink.after_batch() {
            result = result.and(out.write_all(&line));
        }
        if let Err(e) = result.and(out.flush()) {
            sink.failed(&e);
        }
        for done in flushed {
            let _ = done.send(());
        }
        std::thread::sleep(BATCH_INTERVAL);
    }
}

#[cfg(test)]
impl LineWriter {
    /// A writer whose queue holds `capacity` lines and is never read.
    pub(crate) fn unread(capacity: usize) -> LineWriter {
        let (queue, rx) = sync_channel(capacity);
        std::mem::forget(rx);
        LineWriter {
            queue,
            reopen: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A sink that keeps what it is given, and says after each batch how many there were.
    #[derive(Clone, Default)]
    struct Memory(Arc<Mutex<Vec<u8>>>);

    impl Write for Memory {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("memory").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink for Memory {
        fn open(&mut self) -> std::io::Result<Box<dyn Write + Send>> {
            Ok(Box::new(self.clone()))
        }
        fn failed(&self, _: &std::io::Error) {}
        fn after_batch(&mut self) -> Option<Vec<u8>> {
            Some(b"batch\n".to_vec())
        }
    }

    #[test]
    fn flush_waits_until_every_line_is_written_in_order() {
        let memory = Memory::default();
        let writer = LineWriter::start("test-lines", memory.clone()).expect("writer");
        for i in 0..1000 {
            assert!(writer.push(format!("{i}\n").into_bytes()));
        }
        assert!(writer.flush(Duration::from_secs(10)));
        let text = String::from_utf8(memory.0.lock().expect("memory").clone()).expect("UTF-8");
        let numbers: Vec<u32> = text.lines().filter_map(|l| l.parse().ok()).collect();
        assert_eq!(numbers, (0..1000).collect::<Vec<_>>());
        assert!(text.ends_with("batch\n"), "{text}");
    }

    #[test]
    fn a_full_queue_drops_rather_than_waits() {
        let writer = LineWriter::unread(1);
        assert!(writer.push(b"one\n".to_vec()));
        assert!(!writer.push(b"two\n".to_vec()));
        // Nor does a flush wait for a queue nobody empties longer than it was told to.
        let started = Instant::now();
        assert!(!writer.flush(Duration::from_millis(100)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
