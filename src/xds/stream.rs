//! What the SotW and delta state machines share: their outputs, events and per-type status.
