//! State-of-the-world ADS: a pure state machine per stream (requests and snapshots in, responses out).
