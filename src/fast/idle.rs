//! When idle client connections give up waiting: one timer per worker thread instead of
//! one per connection.
//!
//! A connection waiting for a request arms its [`Ticket`] with the instant it gives up
//! (the keep-alive or head timeout, or the end of the drain window), and its thread's
//! sweeper task wakes it then. A waiting connection holds a slot of 32 bytes on its
//! thread's board rather than a tokio timer (112 bytes, boxed, and a timer-wheel entry):
//! memory per idle keep-alive connection is what an edge proxy is judged on
//! (BENCHMARKS.md, memory). The sweeper sleeps until the earliest deadline, at most
//! once per [`GRAIN`], and ends when its board has no connection; a deadline is met
//! within a few milliseconds, or within [`GRAIN`] of the previous sweep.
//!
//! A slot's waker is taken when its connection is woken, and its deadline cleared, so
//! a connection that became busy is woken at most once for a deadline it armed while
//! idle (a spurious poll, which every future tolerates). When a service starts closing
//! ([`services_closing`]), every sweeper wakes all its waiting connections once, so they
//! look at the drain window.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Least time between two sweeps of one board.
pub const GRAIN: Duration = Duration::from_millis(100);

/// Woken when a service stops listening.
static CLOSING: Notify = Notify::const_new();

/// A service stopped listening: every waiting connection looks at the drain window.
pub fn services_closing() {
    CLOSING.notify_waiters();
}

#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    due: Option<Instant>,
}

#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Tickets alive.
    live: usize,
    /// Whether a sweeper task runs for this board.
    running: bool,
    /// When the sweeper plans to sweep next (`None`: it waits for a deadline).
    next: Option<Instant>,
    sweeper: Option<Waker>,
}

/// The waiting connections of one worker thread.
#[derive(Default)]
pub struct Board(Mutex<Slots>);

impl Board {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        // A panic while holding the lock leaves the slots consistent (each operation is
        // a few stores), so a poisoned lock is used as it is.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

thread_local! {
    static BOARD: Arc<Board> = Arc::new(Board::default());
}

/// A connection's place on its thread's board.
pub struct Ticket {
    board: Arc<Board>,
    slot: u32,
}

impl Ticket {
    /// A slot on this thread's board; starts the thread's sweeper if none runs. Must be
    /// called within a tokio runtime.
    pub fn new() -> Ticket {
        let board = BOARD.with(Arc::clone);
        let (slot, start) = {
            let mut s = board.lock();
            let slot = match s.free.pop() {
                Some(i) => i,
                None => {
                    s.slots.push(Slot::default());
                    (s.slots.len() - 1) as u32
                }
            };
            s.live += 1;
            let start = !s.running;
            s.running = true;
            (slot, start)
        };
        if start {
            tokio::spawn(sweep(Running(board.clone())));
        }
        Ticket { board, slot }
    }

    /// Wakes `waker` at `due` (or when a service starts closing), once.
    pub fn arm(&self, waker: &Waker, due: Instant) {
        let wake_sweeper = {
            let mut s = self.board.lock();
            let slot = &mut s.slots[self.slot as usize];
            if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                slot.waker = Some(waker.clone());
            }
            slot.due = Some(due);
            // The sweeper sleeps past this deadline: wake it to plan again.
            match s.next {
                Some(next) if next <= due => None,
                _ => {
                    s.next = Some(due);
                    s.sweeper.take()
                }
            }
        };
        if let Some(w) = wake_sweeper {
            w.wake();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.board.lock();
        s.slots[self.slot as usize] = Slot::default();
        s.free.push(self.slot);
        s.live -= 1;
    }
}

/// Held by a sweeper task: when the task ends, or is dropped with its runtime, the next
/// ticket starts another.
struct Running(Arc<Board>);

impl Drop for Running {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.running = false;
        s.next = None;
        s.sweeper = None;
    }
}

/// Wakes the board's connections whose deadline passed, then sleeps until the next
/// deadline; ends when no ticket is left.
async fn sweep(running: Running) {
    use std::future::Future;
    use std::task::Poll;
    let board = &running.0;
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut last = Instant::now();
    loop {
        let closing = CLOSING.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        let mut all = false;
        let due = {
            let mut s = board.lock();
            if s.live == 0 {
                return;
            }
            let now = Instant::now();
            last = last.max(now);
            let mut woken = Vec::new();
            let mut next: Option<Instant> = None;
            for slot in s.slots.iter_mut() {
                match slot.due {
                    Some(due) if due <= now => {
                        slot.due = None;
                        woken.extend(slot.waker.take());
                    }
                    Some(due) => next = Some(next.map_or(due, |n| n.min(due))),
                    None => {}
                }
            }
            s.next = next;
            drop(s);
            woken.into_iter().for_each(Waker::wake);
            next
        };
        match due {
            Some(due) => timer.as_mut().reset(due.max(last + GRAIN)),
            None => timer
                .as_mut()
                .reset(Instant::now() + Duration::from_secs(3600)),
        }
        std::future::poll_fn(|cx| {
            if closing.as_mut().poll(cx).is_ready() {
                all = true;
                return Poll::Ready(());
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut s = board.lock();
            if s.next != due {
                // A connection armed an earlier deadline since the sweep.
                return Poll::Ready(());
            }
            s.sweeper = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        last = Instant::now();
        if all {
            let woken: Vec<Waker> = {
                let mut s = board.lock();
                s.slots.iter_mut().filter_map(|s| s.waker.take()).collect()
            };
            woken.into_iter().for_each(Waker::wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::task::Poll;

    /// Arms `ticket` for `due` and returns once woken, with the time it was woken.
    async fn woken_at(ticket: &Ticket, due: Instant) -> Instant {
        let mut armed = false;
        poll_fn(|cx| {
            if armed {
                return Poll::Ready(Instant::now());
            }
            armed = true;
            ticket.arm(cx.waker(), due);
            Poll::Pending
        })
        .await
    }

    /// `services_closing` wakes the sweepers of every test's runtime: the tests of this
    /// module run one at a time.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn live() -> usize {
        BOARD.with(|b| b.lock().live)
    }

    /// What a waiting connection holds here instead of a tokio timer (112 bytes, boxed).
    #[test]
    fn a_slot_is_small() {
        assert!(std::mem::size_of::<Slot>() <= 32);
        assert!(std::mem::size_of::<Ticket>() <= 16);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_woken_at_its_deadline_and_not_before() {
        let _serial = SERIAL.lock().await;
        let start = Instant::now();
        let ticket = Ticket::new();
        let at = woken_at(&ticket, start + Duration::from_secs(75)).await;
        assert!(at >= start + Duration::from_secs(75), "woken early: {at:?}");
        assert!(at < start + Duration::from_secs(75) + GRAIN * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_armed_later_is_met() {
        let _serial = SERIAL.lock().await;
        let start = Instant::now();
        let late = Ticket::new();
        let early = Ticket::new();
        // The sweeper plans for the 75 s deadline first.
        let far =
            tokio::spawn(async move { woken_at(&late, start + Duration::from_secs(75)).await });
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at = woken_at(&early, start + Duration::from_secs(5)).await;
        assert!(at >= start + Duration::from_secs(5));
        assert!(at < start + Duration::from_secs(6), "woken at {at:?}");
        let at = far.await.unwrap();
        assert!(at >= start + Duration::from_secs(75));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_not_woken_again_for_an_old_deadline() {
        let _serial = SERIAL.lock().await;
        let start = Instant::now();
        let ticket = Ticket::new();
        woken_at(&ticket, start + Duration::from_secs(1)).await;
        // Its waker was taken: the sweeper holds no reference to the task any more.
        let waker = BOARD.with(|b| b.lock().slots[ticket.slot as usize].waker.is_some());
        assert!(!waker);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closing_service_wakes_every_waiting_connection() {
        let _serial = SERIAL.lock().await;
        let start = Instant::now();
        let ticket = Ticket::new();
        let waiting =
            tokio::spawn(async move { woken_at(&ticket, start + Duration::from_secs(3600)).await });
        tokio::time::sleep(Duration::from_secs(2)).await;
        services_closing();
        let at = waiting.await.unwrap();
        assert!(at < start + Duration::from_secs(3), "woken at {at:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_reused_and_the_sweeper_ends_with_the_last_ticket() {
        let _serial = SERIAL.lock().await;
        let a = Ticket::new();
        let b = Ticket::new();
        assert_eq!(live(), 2);
        let slot = a.slot;
        drop(a);
        let c = Ticket::new();
        assert_eq!(c.slot, slot, "a freed slot is taken again");
        drop((b, c));
        assert_eq!(live(), 0);
        tokio::time::sleep(Duration::from_secs(7200)).await;
        assert!(!BOARD.with(|b| b.lock().running), "the sweeper still runs");
        // The next ticket starts another sweeper, which wakes it.
        let d = Ticket::new();
        let start = Instant::now();
        let at = woken_at(&d, start + Duration::from_secs(2)).await;
        assert!(at >= start + Duration::from_secs(2));
    }
}
