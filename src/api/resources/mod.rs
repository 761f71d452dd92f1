//! One module per resource: its handlers and its request and response types.

pub mod admin;
pub mod audit;
pub mod binb_token;
pub mod connect;
pub mod connection;
pub mod connections;
pub mod connector_types;
pub mod health;
pub mod oauth_token;
pub mod proxy;
pub mod token_exchange;
