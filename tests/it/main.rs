//! The one integration-test binary. `harness` starts real components on
//! loopback; each file below tests one capability against them.

mod harness;

mod ahead;
mod aws;
mod aws_rolling;
mod cli;
mod control;
mod corpus;
mod customising;
mod drain;
mod faults;
mod gates;
mod haproxy;
mod health;
mod init_doctor;
mod install;
mod lb_contract;
mod multi_lb;
mod nginx;
mod output;
mod safety;
mod ssh;
mod state;
mod strategies;
