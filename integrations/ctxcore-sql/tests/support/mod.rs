//! Shared test support. Every test file says `mod support;` and uses
//! `support::pg`.
pub(crate) mod pg;
