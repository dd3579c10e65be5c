//! mube's API server: a Kubernetes-shaped REST API over one narrow store.
//!
//! Layers, bottom up: `store` (the storage interface and the write-ahead-log backend),
//! `registry` (resource kinds as declarations plus hooks, served by generic
//! code), `http` (routes, watch streaming, Status errors), and `controllers`
//! (API clients that act on what they watch), `nodes` (registration from
//! the config and the heartbeat). `server` wires them together.

pub mod audit;
pub mod auth;
pub mod config;
pub mod controllers;
pub mod error;
pub mod files;
pub mod http;
pub mod kubeconfig;
pub mod kubernetes_service;
pub mod metrics;
pub mod nodes;
pub mod pki;
pub mod registry;
pub mod server;
pub mod store;
