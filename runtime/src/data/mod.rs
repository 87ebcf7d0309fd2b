//! Data loading. TRAINING HELPER: implement.
