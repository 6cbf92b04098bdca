//! Graceful shutdown of served connections: one flag, and the wakers of the connections that
//! watch it. When the flag is set, every watched connection is woken and told to finish its
//! in-flight request and close; [`Shutdown::shutdown`] resolves when all have ended.
//!
//! A watched connection pays one atomic load and one waker comparison per poll. hyper-util's
//! `GracefulShutdown` polls a `watch::Receiver::changed` future at every poll of the connection
//! (about 170 instructions, once per request and once per streamed event).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use hyper_util::server::graceful::GracefulConnection;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// The shutdown signal of one server loop; [`Shutdown::watcher`] enrolls a connection.
#[derive(Default)]
pub struct Shutdown {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    signalled: AtomicBool,
    slots: Mutex<Slots>,
    /// Notified when the last enrolled connection leaves.
    drained: Notify,
}

/// The enrolled connections' wakers by slot (a slot is reused once its connection leaves).
#[derive(Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Slots {
    /// Connections enrolled and not yet ended: the slots not free.
    fn live(&self) -> usize {
        self.wakers.len() - self.free.len()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Enrolls a connection (counted from now: shutdown waits for it even before it is
    /// served, until the watcher is dropped).
    pub fn watcher(&self) -> Watcher {
        let mut slots = self.shared.slots.lock();
        let slot = match slots.free.pop() {
            Some(slot) => slot,
            None => {
                slots.wakers.push(None);
                slots.wakers.len() - 1
            }
        };
        Watcher {
            shared: self.shared.clone(),
            slot,
        }
    }

    /// Tells every watched connection to finish and close, and waits until all have ended.
    pub async fn shutdown(self) {
        self.shared.signalled.store(true, Ordering::SeqCst);
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            // Enabled before the count is read: a connection leaving after the read notifies it.
            drained.as_mut().enable();
            {
                let slots = self.shared.slots.lock();
                if slots.live() == 0 {
                    return;
                }
                for waker in slots.wakers.iter().flatten() {
                    waker.wake_by_ref();
                }
            }
            drained.await;
        }
    }

    /// Connections enrolled and not yet ended.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.shared.slots.lock().live()
    }
}

/// One enrolled connection; leaves the count when dropped.
pub struct Watcher {
    shared: Arc<Shared>,
    slot: usize,
}

impl Watcher {
    /// The connection, closed gracefully once shutdown is signalled.
    pub fn watch<C: GracefulConnection>(self, conn: C) -> Watched<C> {
        Watched {
            conn,
            watcher: self,
            waker: None,
            shutting_down: false,
        }
    }

    /// Whether shutdown is signalled; if not, `cx`'s task is woken when it is (`known` keeps
    /// the waker registered last, so an unchanged waker is not registered again).
    pub fn poll_signalled(&self, known: &mut Option<Waker>, cx: &Context<'_>) -> bool {
        // Registered before the flag is read: a shutdown signalled after the read wakes it.
        self.register(known, cx.waker());
        self.is_signalled()
    }

    /// Resolves once shutdown is signalled (a connection not yet being served waits on it).
    pub async fn signalled(&self) {
        let mut known = None;
        std::future::poll_fn(|cx| {
            if self.poll_signalled(&mut known, cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Whether shutdown is signalled.
    pub fn is_signalled(&self) -> bool {
        self.shared.signalled.load(Ordering::SeqCst)
    }

    /// Registers the waker that shutdown wakes, unless it is the one registered already.
    fn register(&self, known: &mut Option<Waker>, current: &Waker) {
        if crate::http_util::keep_waker(known, current) {
            self.shared.slots.lock().wakers[self.slot] = known.clone();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut slots = self.shared.slots.lock();
        slots.wakers[self.slot] = None;
        slots.free.push(self.slot);
        if slots.live() == 0 {
            self.shared.drained.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection future watched for shutdown.
    pub struct Watched<C> {
        #[pin]
        conn: C,
        watcher: Watcher,
        waker: Option<Waker>,
        shutting_down: bool,
    }
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.shutting_down {
            // Registered before the flag is read: a shutdown signalled after the read wakes
            // this waker, one signalled before it is seen here.
            if this.watcher.poll_signalled(this.waker, cx) {
                *this.shutting_down = true;
                this.conn.as_mut().graceful_shutdown();
            }
        }
        this.conn.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Lets every other task on this single-threaded runtime run until it waits.
    async fn settle() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn shutdown_waits_for_every_enrolled_connection_and_slots_are_reused() {
        let s = Shutdown::new();
        let a = s.watcher();
        let b = s.watcher();
        assert_eq!((a.slot, b.slot, s.live()), (0, 1, 2));
        drop(a);
        let c = s.watcher();
        assert_eq!((c.slot, s.live()), (0, 2), "a freed slot is reused");
        // The test runtime has one thread: the spawned shutdown runs only while this yields.
        let done = tokio::spawn(s.shutdown());
        settle().await;
        assert!(!done.is_finished(), "two connections are still enrolled");
        drop(b);
        settle().await;
        assert!(!done.is_finished(), "one connection is still enrolled");
        drop(c);
        tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("shutdown ends once the last connection leaves")
            .unwrap();
    }

    #[tokio::test]
    async fn a_waiting_watcher_learns_of_shutdown() {
        let s = Shutdown::new();
        let w = s.watcher();
        let waiting = tokio::spawn(async move {
            w.signalled().await;
            w
        });
        settle().await;
        assert!(!waiting.is_finished(), "no shutdown yet");
        let done = tokio::spawn(s.shutdown());
        let w = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by shutdown")
            .unwrap();
        assert!(w.is_signalled());
        drop(w);
        tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("shutdown ends once the watcher leaves")
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_with_nothing_enrolled_ends_at_once() {
        tokio::time::timeout(Duration::from_secs(5), Shutdown::new().shutdown())
            .await
            .expect("nothing to wait for");
    }
}
