//! Graph dumps.
