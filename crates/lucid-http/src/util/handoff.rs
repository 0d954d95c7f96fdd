//! Lucid patch: a one-shot hand-over of one value between two threads.
//!
//! The sequential readers and writers pass a connection's reader, and a
//! "done" signal, from one request to the next. They used a
//! `std::sync::mpsc` channel each, and the first send on a new channel
//! allocates and zeroes a block of slots: two channels per request were a
//! fifth of a keep-alive GET's instructions. A hand-over is one small
//! allocation, a mutex and a condition variable, which is signalled only
//! when the taker is waiting on it: a signal is a system call (`futex`)
//! even when nobody waits, and on a keep-alive connection whose requests
//! are answered on its own thread nobody ever does.

use std::sync::{Arc, Condvar, Mutex};

/// The giving side; dropping it without giving tells the taker so.
pub struct Giver<T>(Arc<Shared<T>>);

/// The taking side.
pub struct Taker<T>(Arc<Shared<T>>);

struct Shared<T> {
    state: Mutex<Inner<T>>,
    changed: Condvar,
}

struct Inner<T> {
    value: State<T>,
    /// Whether the taker waits on `changed`.
    taker_waits: bool,
}

enum State<T> {
    Pending,
    Given(T),
    /// Taken, or the giver went away without giving.
    Over,
}

/// A new hand-over.
pub fn handoff<T>() -> (Giver<T>, Taker<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(Inner {
            value: State::Pending,
            taker_waits: false,
        }),
        changed: Condvar::new(),
    });
    (Giver(Arc::clone(&shared)), Taker(shared))
}

impl<T> Shared<T> {
    fn settle(&self, to: State<T>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(state.value, State::Pending) {
            state.value = to;
            if state.taker_waits {
                self.changed.notify_one();
            }
        }
    }
}

impl<T> Giver<T> {
    /// Hands `value` over (once: a second value is dropped, as is one given
    /// after the taker took or went away).
    pub fn give(&self, value: T) {
        self.0.settle(State::Given(value));
    }
}

impl<T> Drop for Giver<T> {
    fn drop(&mut self) {
        self.0.settle(State::Over);
    }
}

impl<T> Taker<T> {
    /// Waits for the value; `None` if the giver went away without giving
    /// (or it was taken already).
    pub fn take(&self) -> Option<T> {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(state.value, State::Pending) {
            state.taker_waits = true;
            state = self
                .0
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state.taker_waits = false;
        match std::mem::replace(&mut state.value, State::Over) {
            State::Given(value) => Some(value),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_given_on_one_thread_is_taken_on_another() {
        let (giver, taker) = handoff();
        let thread = std::thread::spawn(move || taker.take());
        giver.give(42);
        assert_eq!(thread.join().unwrap(), Some(42));
    }

    #[test]
    fn a_giver_dropped_without_giving_wakes_the_taker_with_none() {
        let (giver, taker) = handoff::<u8>();
        let thread = std::thread::spawn(move || taker.take());
        drop(giver);
        assert_eq!(thread.join().unwrap(), None);
    }

    #[test]
    fn a_value_is_taken_once() {
        let (giver, taker) = handoff();
        giver.give("x");
        assert_eq!(taker.take(), Some("x"));
        assert_eq!(taker.take(), None);
    }
}
