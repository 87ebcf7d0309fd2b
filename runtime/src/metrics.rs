//! TRAINING HELPER: implement.
