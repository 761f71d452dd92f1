//! Black-box tests of the HTTP API and the CLI: the real `tokenbox` binary on a loopback port,
//! a real SQLite file per test, and an in-test OAuth token endpoint.

mod binb_token;
mod cli;
mod helpers;
mod refresh;
mod signup;
mod storage;
