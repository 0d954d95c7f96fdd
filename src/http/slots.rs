//! The request slots: how many requests are answered at once
//! (`general.threads`), and the scratch space each answer reuses.
//! A connection's thread takes a slot to answer the request it has just
//! read, on that same thread, and gives it back when done (also when a
//! handler panics); with every slot taken it waits for one, in turn,
//! holding nothing but its connection, as a request once waited in a queue
//! for a worker thread. A stop closes the slots: a request still waiting then
//! gets the refusal, and the stop waits until the slots in use are back.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::reply::Responder;
use super::Buffers;
use crate::locks::lock;

/// What one answer in progress reuses from the last one in its slot.
#[derive(Default)]
pub struct Scratch {
    /// The request target, copied so the request can be borrowed mutably
    /// by its handler.
    pub url: String,
    /// Keys, records and values.
    pub bufs: Buffers,
    /// The response head being written.
    pub responder: Responder,
}

/// The slots of one server.
pub struct Slots {
    state: Mutex<State>,
    /// Signalled when a slot comes back while the stop waits for them.
    returned: Condvar,
    /// Signalled at the stop.
    closed: Condvar,
    size: usize,
}

struct State {
    free: Vec<Scratch>,
    closed: bool,
    /// The threads waiting for a slot, oldest first, each with its number.
    /// A slot given back goes to the oldest, never to a thread that
    /// arrives meanwhile: under load, a request waits its turn, not for
    /// luck (the tail latency of a free-for-all was three times the
    /// bare server's).
    queue: VecDeque<(u64, Thread)>,
    /// Slots given to a waiting thread that has yet to pick its up.
    handed: Vec<(u64, Scratch)>,
    /// The number the next waiting thread gets.
    next_number: u64,
    /// Whether the stop waits on `returned`.
    stop_waits: bool,
}

impl Slots {
    /// `size` slots, all free.
    pub fn new(size: usize) -> Self {
        Self {
            state: Mutex::new(State {
                free: (0..size).map(|_| Scratch::default()).collect(),
                closed: false,
                queue: VecDeque::with_capacity(size),
                handed: Vec::with_capacity(size),
                next_number: 0,
                stop_waits: false,
            }),
            returned: Condvar::new(),
            closed: Condvar::new(),
            size,
        }
    }

    /// How many requests are answered at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// A free slot, waiting for one (in turn) if every slot is taken;
    /// `None` once the slots are closed.
    pub fn take(&self) -> Option<Taken<'_>> {
        let mut state = lock(&self.state);
        if state.closed {
            return None;
        }
        if state.queue.is_empty() {
            if let Some(scratch) = state.free.pop() {
                return Some(self.taken(scratch));
            }
        }
        let number = state.next_number;
        state.next_number += 1;
        state.queue.push_back((number, thread::current()));
        loop {
            if let Some(at) = state.handed.iter().position(|(n, _)| *n == number) {
                let (_, scratch) = state.handed.swap_remove(at);
                if !state.closed {
                    return Some(self.taken(scratch));
                }
                self.put_free(&mut state, scratch);
                return None;
            }
            if state.closed {
                state.queue.retain(|(n, _)| *n != number);
                return None;
            }
            drop(state);
            thread::park();
            state = lock(&self.state);
        }
    }

    fn taken(&self, scratch: Scratch) -> Taken<'_> {
        Taken {
            slots: self,
            scratch: Some(scratch),
        }
    }

    /// Gives `scratch` back: to the thread waiting longest, else to the
    /// free ones.
    fn give_back(&self, scratch: Scratch) {
        let mut state = lock(&self.state);
        match state.queue.pop_front() {
            Some((number, thread)) => {
                state.handed.push((number, scratch));
                drop(state);
                thread.unpark();
            }
            None => self.put_free(&mut state, scratch),
        }
    }

    fn put_free(&self, state: &mut State, scratch: Scratch) {
        state.free.push(scratch);
        if state.stop_waits {
            self.returned.notify_one();
        }
    }

    /// Refuses every later [`take`](Self::take), and wakes those waiting.
    pub fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        for (_, thread) in &state.queue {
            thread.unpark();
        }
        drop(state);
        self.closed.notify_all();
    }

    /// Waits until the slots are closed, then until every slot is back or
    /// `grace` has passed; returns how many are still in use.
    pub fn wait_returned_after_close(&self, grace: Duration) -> usize {
        let mut state = lock(&self.state);
        while !state.closed {
            state = self.closed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        drop(state);
        self.wait_returned(Instant::now() + grace)
    }

    /// Waits until every slot is back or `deadline` passes; returns how
    /// many are still in use.
    fn wait_returned(&self, deadline: Instant) -> usize {
        let mut state = lock(&self.state);
        state.stop_waits = true;
        while state.free.len() < self.size {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .returned
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.stop_waits = false;
        self.size - state.free.len()
    }
}

/// A slot in use; given back when dropped.
pub struct Taken<'s> {
    slots: &'s Slots,
    scratch: Option<Scratch>,
}

impl std::ops::Deref for Taken<'_> {
    type Target = Scratch;

    fn deref(&self) -> &Scratch {
        self.scratch.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Taken<'_> {
    fn deref_mut(&mut self) -> &mut Scratch {
        self.scratch.as_mut().expect("held until dropped")
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(mut scratch) = self.scratch.take() {
            scratch.bufs.trim();
            self.slots.give_back(scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn a_slot_is_waited_for_when_all_are_taken_and_closing_refuses_the_waiting() {
        let slots = Arc::new(Slots::new(1));
        let taken = slots.take().expect("a free slot");
        let waiting = {
            let slots = Arc::clone(&slots);
            thread::spawn(move || slots.take().map(|_| ()))
        };
        assert_eq!(slots.wait_returned(Instant::now()), 1, "one in use");
        drop(taken);
        assert_eq!(waiting.join().unwrap(), Some(()), "it got the slot back");
        assert_eq!(
            slots.wait_returned(Instant::now() + Duration::from_secs(10)),
            0
        );
        let taken = slots.take().expect("a free slot");
        let waiting = {
            let slots = Arc::clone(&slots);
            thread::spawn(move || slots.take().map(|_| ()))
        };
        slots.close();
        assert_eq!(waiting.join().unwrap(), None, "closed while waiting");
        assert!(slots.take().is_none(), "closed");
        drop(taken);
        assert_eq!(slots.wait_returned(Instant::now()), 0);
    }

    /// Waits until `n` threads wait for a slot.
    fn until_waiting(slots: &Slots, n: usize) {
        while lock(&slots.state).queue.len() < n {
            thread::yield_now();
        }
    }

    #[test]
    fn slots_go_to_the_threads_waiting_in_the_order_they_came() {
        let slots = Arc::new(Slots::new(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let taken = slots.take().expect("a free slot");
        let waiters: Vec<_> = (0..3)
            .map(|n| {
                let (waiting, order) = (Arc::clone(&slots), Arc::clone(&order));
                let waiter = thread::spawn(move || {
                    let _slot = waiting.take().expect("a slot in turn");
                    lock(&order).push(n);
                });
                until_waiting(&slots, n + 1);
                waiter
            })
            .collect();
        drop(taken);
        for waiter in waiters {
            waiter.join().unwrap();
        }
        assert_eq!(*lock(&order), [0, 1, 2]);
        assert_eq!(slots.wait_returned(Instant::now()), 0);
    }

    #[test]
    fn a_slot_comes_back_when_its_holder_panics() {
        let slots = Arc::new(Slots::new(1));
        let holder = {
            let slots = Arc::clone(&slots);
            thread::spawn(move || {
                let _taken = slots.take();
                panic!("a handler's bug");
            })
        };
        assert!(holder.join().is_err());
        assert!(slots.take().is_some());
    }
}
