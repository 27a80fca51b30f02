//! The guide (`docs/guide.md`), compiled and run as doc tests.
#![doc = include_str!("../../../docs/guide.md")]
