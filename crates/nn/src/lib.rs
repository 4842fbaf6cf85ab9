//! Nielsen network.
