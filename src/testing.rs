//! Offline runs.
