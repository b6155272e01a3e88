//! The state writer: a thread per pipeline that turns staged changes into
//! RocksDB write batches, so memtable inserts run beside the engine instead
//! of on its thread. Submissions are bounded (backpressure) and written in
//! order; a barrier waits until everything submitted is written.

use std::ops::Range;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rocksdb::{WriteBatch, WriteOptions};

use super::Target;
use super::{StateDb, StoreError};

/// One staged put (with a value) or delete, as ranges of the arena.
pub(super) struct Op {
    pub(super) target: Target,
    pub(super) key: Range<usize>,
    pub(super) value: Option<Range<usize>>,
}

/// Changes staged by the engine: key and value bytes in one arena.
#[derive(Default)]
pub(super) struct Staged {
    pub(super) arena: Vec<u8>,
    pub(super) ops: Vec<Op>,
}

enum Job {
    Write(Staged),
    Barrier(SyncSender<()>),
}

/// Submissions waiting at most (each up to a micro-batch of changes).
const QUEUE: usize = 4;

/// Handle to the writer thread.
pub(super) struct Writer {
    jobs: Option<SyncSender<Job>>,
    spare: Receiver<Staged>,
    failure: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<()>>,
}

fn write(db: &StateDb, families: &[(Target, String)], staged: &Staged) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    let mut handles = Vec::with_capacity(families.len());
    for (target, name) in families {
        handles.push((*target, db.db.cf_handle(name)));
    }
    for op in &staged.ops {
        let Some(cf) = handles
            .iter()
            .find(|(t, _)| *t == op.target)
            .and_then(|(_, h)| h.clone())
        else {
            return Err(StoreError::Write(
                "a column family disappeared (was the state reset while running?)".into(),
            ));
        };
        let key = &staged.arena[op.key.clone()];
        match &op.value {
            Some(v) => batch.put_cf(&cf, key, &staged.arena[v.clone()]),
            None => batch.delete_cf(&cf, key),
        }
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(false);
    db.db
        .write_opt(batch, &opts)
        .map_err(|e| StoreError::Write(e.into_string()))
}

impl Writer {
    /// Starts the thread of `pipeline`, writing to `families`.
    pub(super) fn spawn(
        db: Arc<StateDb>,
        pipeline: &str,
        families: Vec<(Target, String)>,
    ) -> Result<Self, StoreError> {
        let (jobs, incoming) = mpsc::sync_channel::<Job>(QUEUE);
        let (give_back, spare) = mpsc::sync_channel::<Staged>(QUEUE + 1);
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let failed = failure.clone();
        let thread = std::thread::Builder::new()
            .name(format!("state-{pipeline}"))
            .spawn(move || {
                for job in incoming {
                    match job {
                        Job::Write(mut staged) => {
                            if let Err(e) = write(&db, &families, &staged) {
                                if let Ok(mut f) = failed.lock() {
                                    f.get_or_insert(e.to_string());
                                }
                            }
                            staged.arena.clear();
                            staged.ops.clear();
                            let _ = give_back.try_send(staged);
                        }
                        Job::Barrier(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(|source| StoreError::Io {
                path: "state writer thread".into(),
                source,
            })?;
        Ok(Self {
            jobs: Some(jobs),
            spare,
            failure,
            thread: Some(thread),
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.failure.lock() {
            Ok(f) => match f.as_ref() {
                Some(reason) => Err(StoreError::Write(reason.clone())),
                None => Ok(()),
            },
            Err(_) => Err(StoreError::Write(
                "writer lock poisoned (this is a bug)".into(),
            )),
        }
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| StoreError::Write("the state writer stopped".into()))
    }

    /// Queues `staged` for writing (waits while the queue is full) and
    /// returns an empty buffer to stage into next.
    pub(super) fn submit(&self, staged: Staged) -> Result<Staged, StoreError> {
        self.check()?;
        self.send(Job::Write(staged))?;
        Ok(self.spare.try_recv().unwrap_or_default())
    }

    /// Waits until everything submitted so far is written.
    pub(super) fn barrier(&self) -> Result<(), StoreError> {
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Job::Barrier(done))?;
        wait.recv()
            .map_err(|_| StoreError::Write("the state writer stopped".into()))?;
        self.check()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the queued writes.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
