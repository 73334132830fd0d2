//! Incremental (delta) ADS: a pure state machine per stream (requests and snapshots in, responses out).
