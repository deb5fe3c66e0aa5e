//! Exit statuses of child processes, fed by the one reaper the process has.
//!
//! The shim crate reaps every child with `waitpid(-1)`, so `Child::wait` cannot be used:
//! every exit (helper processes and container processes alike) arrives here, and whoever
//! cares about a pid waits on it. An exit that arrives before anybody waits for its pid
//! is kept for a while, so a process that dies right after it was spawned is not lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

const KEEP_UNCLAIMED: Duration = Duration::from_secs(60);
/// At most this many unclaimed exits are kept (the oldest go first): a guest reporting
/// exits of pids nobody waits for costs the guest, not the shim's memory.
const MAX_UNCLAIMED: usize = 1024;

#[derive(Default)]
struct Inner {
    waiters: HashMap<i32, Vec<oneshot::Sender<i32>>>,
    unclaimed: HashMap<i32, (i32, Instant)>,
    /// Set when every process is gone at once (a VM died): all waits end with this code.
    closed: Option<i32>,
}

/// Exit codes follow runc: the exit status, or 128 + signal for a signal death.
#[derive(Clone, Default)]
pub struct Exits {
    inner: Arc<Mutex<Inner>>,
}

impl Exits {
    pub fn notify(&self, pid: i32, code: i32) {
        let mut inner = self.inner.lock().expect("exits lock");
        if let Some(waiters) = inner.waiters.remove(&pid) {
            for w in waiters {
                let _ = w.send(code);
            }
            return;
        }
        let now = Instant::now();
        inner
            .unclaimed
            .retain(|_, (_, at)| now.duration_since(*at) < KEEP_UNCLAIMED);
        if inner.unclaimed.len() >= MAX_UNCLAIMED
            && let Some(oldest) = inner
                .unclaimed
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(pid, _)| *pid)
        {
            inner.unclaimed.remove(&oldest);
        }
        inner.unclaimed.insert(pid, (code, now));
    }

    /// Every process is gone (its VM died): end every wait, now and later, with `code`.
    pub fn close(&self, code: i32) {
        let mut inner = self.inner.lock().expect("exits lock");
        inner.closed = Some(code);
        for (_, waiters) in inner.waiters.drain() {
            for w in waiters {
                let _ = w.send(code);
            }
        }
    }

    /// A receiver that resolves with the exit code of `pid`.
    pub fn subscribe(&self, pid: i32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().expect("exits lock");
        if let Some((code, _)) = inner.unclaimed.remove(&pid) {
            let _ = tx.send(code);
        } else if let Some(code) = inner.closed {
            let _ = tx.send(code);
        } else {
            inner.waiters.entry(pid).or_default().push(tx);
        }
        rx
    }

    pub async fn wait(&self, pid: i32) -> i32 {
        // The sender is only dropped with the registry itself.
        self.subscribe(pid).await.unwrap_or(255)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn early_exit_is_kept_for_a_late_waiter() {
        let exits = Exits::default();
        exits.notify(42, 137);
        assert_eq!(exits.wait(42).await, 137);
    }

    #[tokio::test]
    async fn a_flood_of_unclaimed_exits_is_bounded() {
        let exits = Exits::default();
        for pid in 0..(MAX_UNCLAIMED as i32 * 4) {
            exits.notify(10_000 + pid, 1);
        }
        let kept = exits.inner.lock().unwrap().unclaimed.len();
        assert_eq!(kept, MAX_UNCLAIMED);
        // The newest are kept.
        assert_eq!(exits.wait(10_000 + MAX_UNCLAIMED as i32 * 4 - 1).await, 1);
    }

    #[tokio::test]
    async fn close_ends_every_wait() {
        let exits = Exits::default();
        let a = exits.subscribe(7);
        exits.close(255);
        assert_eq!(a.await.unwrap(), 255);
        assert_eq!(exits.wait(8).await, 255);
    }

    #[tokio::test]
    async fn waiters_get_the_exit() {
        let exits = Exits::default();
        let a = exits.subscribe(7);
        let b = exits.subscribe(7);
        exits.notify(7, 3);
        assert_eq!(a.await.unwrap(), 3);
        assert_eq!(b.await.unwrap(), 3);
    }
}
