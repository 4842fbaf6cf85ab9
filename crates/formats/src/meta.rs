//! Meta checkpoints (placeholder)
