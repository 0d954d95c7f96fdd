//! Replication: followers that tail a primary's log; this module's parts
//! are [`state`] (a node's epochs, kept in its data directory, and the rule
//! by which a primary judges a follower's cursor).

pub mod state;
