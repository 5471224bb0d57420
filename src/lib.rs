//! rollscript: deployment workflows written in Rhai, run by a Rust runtime
//! that owns every side effect.
//!
//! # Layout
//!
//! - [`cli`]: clap definitions; nothing below it sees clap.
//! - [`config`]: `rollscript.toml` → a validated [`config::Inventory`].
//! - [`run`]: `run` and `plan` as a pipeline of phases (load, prepare, preflight,
//!   lock and journal, execute, settle, report); `check`, `api`.
//! - [`outcome`]: how a command ends — an exit code, or a [`outcome::Failure`]
//!   printed once by `main`, as text or JSON.
//! - [`preflight`]: what a run checks before its first side effect.
//! - [`init`]: `rollscript init`, a starter inventory read from the live load balancer.
//! - [`doctor`]: `rollscript doctor` and `run --preflight`: would a deploy
//!   work? Every check read-only, in parallel, as one table.
//! - [`engine`]: the Rhai host — the only module that imports `rhai`.
//! - [`effects`]: the layer every side effect crosses (dry-run recorder,
//!   cancellation, bookkeeping of instances taken out of service, capacity guard).
//! - [`primitives`]: the async Rust API as traits (`LoadBalancer`, `Transport`, `HealthCheck`).
//! - [`providers`]: their implementations (haproxy, nginx, aws, none; ssh, local; http),
//!   a folder per provider with its policy in `mod.rs`; one poll backoff for all.
//! - [`state`]: where the deploy lock and the journals live (local `.rollscript/`,
//!   or shared on PostgreSQL), keyed by the inventory's identity; [`lock`] holds
//!   the lock's holder and the local lock file, [`journal`] the records, the
//!   durable writer and their replay.
//! - [`ledger`]: which instances this run has out of service, and how far each
//!   got; [`compensate`]: putting them back after a failure.
//! - [`recover`]: `recover` as a pipeline (select the run, take over its lock,
//!   prepare, compensate, report), `unlock`, `runs` — after a crash, from any
//!   machine.
//! - [`control`]: `pause`, `resume`, `abort`, `promote` — requests to a live
//!   run through its state backend ([`state::control`]), from any machine.
//! - [`redact`]: secrets masked in the lock, the journal and the logs.
//! - [`plan`]: dry-run steps, estimates and rendering.
//! - [`ui`]: logging and prompts; [`summary`]: the run's table and JSON record.
//!
//! `docs/architecture.md` walks one `deregister` through these rooms.

#![allow(clippy::result_large_err)] // ActionError carries the stderr tail on purpose; errors are rare.

pub mod cli;
pub mod compensate;
pub mod config;
pub mod control;
pub mod doctor;
pub mod effects;
pub mod engine;
pub mod init;
pub mod journal;
pub mod ledger;
pub mod lock;
pub mod outcome;
pub mod plan;
pub mod preflight;
pub mod primitives;
pub mod providers;
pub mod recover;
#[cfg(test)]
mod recover_tests;
pub mod redact;
pub mod run;
#[cfg(test)]
mod run_tests;
pub mod state;
pub mod summary;
pub mod ui;
