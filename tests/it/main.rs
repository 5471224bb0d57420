//! The one integration-test binary. `harness` starts real components on
//! loopback; each file below tests one capability against them.

mod harness;

mod cli;
