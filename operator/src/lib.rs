//! qpq-operator: runs quicproquo clusters on Kubernetes.
//!
//! A `QpqCluster` object (see [`crd`]) is reconciled into a StatefulSet of `qpq-node` pods and
//! the objects around it, and the Raft membership of those nodes is driven, one safe step at
//! a time, toward `spec.replicas`.
//!
//! # Layout
//! - [`crd`]: the custom resource types (`QpqCluster`, `QpqBackup`, `QpqScheduledBackup`) and
//!   their schema (with CEL validation).
//! - [`resources`]: pure builders of every desired object from the spec (no I/O).
//! - [`tls`]: the operator-managed CA and node certificates; [`ca_rotation`]: rotating that
//!   CA in confirmed steps without restarting a pod.
//! - [`planner`]: the pure membership planner (next step from what was observed).
//! - [`rollout`]: the pure rollout planner (template version, which pod to replace next,
//!   analysis, automatic rollback).
//! - [`admin_client`]: the node admin API ([`admin_client::NodeAdmin`] is the test seam).
//! - [`reconcile`]: the controller: observe, plan, apply, record status; finalizer.
//! - [`backups`]: the `QpqBackup` controller (one backup Job each, its manifest in the status).
//! - [`scheduled`]: the `QpqScheduledBackup` controller (its backup and drill CronJobs, what
//!   their Jobs did in its status).
//! - [`status`]: conditions and members as written to `.status`.
//! - [`metrics`], [`leader`], [`server`]: Prometheus metrics, Lease leader election, the
//!   health and metrics HTTP endpoint.
//! - [`kubectl`]: rendering for the `kubectl qpq` plugin.
//! - [`transfer`], [`fence`]: leadership transfers and fences asked for through annotations
//!   (`kubectl qpq transfer-leader`, `fence`, `unfence`).
//! - [`crdgen`]: the generated CRD YAML; [`cli`]: the `qpq-operator` command line.
//!
//! The crate does not build images, run nodes, or talk to nodes other than through their
//! admin API.

pub mod admin_client;
pub mod backups;
pub mod ca_rotation;
pub mod chaos;
pub mod cli;
pub mod crd;
pub mod crdgen;
pub mod error;
pub mod fence;
pub mod kubectl;
pub mod leader;
pub mod metrics;
pub mod planner;
pub mod reconcile;
pub mod report;
pub mod resources;
pub mod rollout;
pub mod schedule;
pub mod scheduled;
pub mod server;
pub mod status;
pub mod tls;
pub mod transfer;

pub use error::{Error, Result};
