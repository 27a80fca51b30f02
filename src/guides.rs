//! Compiles and runs the examples of `docs/guides.md` as doc tests.
#![doc = include_str!("../docs/guides.md")]
