//! The request slots: how many requests are answered at once
//! (`general.worker_threads`), and the scratch space each answer reuses.
//! A connection's thread takes a slot to answer the request it has just
//! read, on that same thread, and gives it back when done (also when a
//! handler panics); with every slot taken it waits for one, holding
//! nothing but its connection, as a request once waited in a queue for a
//! worker thread. A stop closes the slots: a request still waiting then
//! gets the refusal, and the stop waits until the slots in use are back.

use std::sync::{Condvar, Mutex, MutexGuard};
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
    /// Signalled when a slot is given back to a thread waiting for one:
    /// before the stop, one waiting to answer a request; after it, the
    /// stop itself.
    returned: Condvar,
    /// Signalled at the stop.
    closed: Condvar,
    size: usize,
}

struct State {
    free: Vec<Scratch>,
    closed: bool,
    /// Threads waiting on `returned`: it is signalled only if one is (a
    /// signal is a system call even when nobody waits).
    waiting: usize,
}

impl Slots {
    /// `size` slots, all free.
    pub fn new(size: usize) -> Self {
        Self {
            state: Mutex::new(State {
                free: (0..size).map(|_| Scratch::default()).collect(),
                closed: false,
                waiting: 0,
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

    /// A free slot, waiting for one if every slot is taken; `None` once the
    /// slots are closed.
    pub fn take(&self) -> Option<Taken<'_>> {
        let mut state = lock(&self.state);
        loop {
            if state.closed {
                return None;
            }
            if let Some(scratch) = state.free.pop() {
                return Some(Taken {
                    slots: self,
                    scratch: Some(scratch),
                });
            }
            state = self.wait(state, None);
        }
    }

    /// Refuses every later [`take`](Self::take), and wakes those waiting.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.returned.notify_all();
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
    pub fn wait_returned(&self, deadline: Instant) -> usize {
        let mut state = lock(&self.state);
        while state.free.len() < self.size && Instant::now() < deadline {
            state = self.wait(state, Some(deadline));
        }
        self.size - state.free.len()
    }

    fn wait<'s>(
        &self,
        mut state: MutexGuard<'s, State>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'s, State> {
        state.waiting += 1;
        let mut state = match deadline {
            None => self.returned.wait(state).unwrap_or_else(|e| e.into_inner()),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.returned
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
        state.waiting -= 1;
        state
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
            let mut state = lock(&self.slots.state);
            state.free.push(scratch);
            if state.waiting > 0 {
                self.slots.returned.notify_one();
            }
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
