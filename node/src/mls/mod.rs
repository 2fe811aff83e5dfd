//! The node's MLS boundary: the only place where the node looks inside MLS bytes.
//!
//! The node never holds group secrets and never decrypts anything (DESIGN invariant 1). It
//! reads exactly two things:
//!
//! - [`framing`]: the *public* header of an RFC 9420 `MLSMessage` (wire format, and for
//!   handshake/application messages the group id, epoch and content type). A hand-written,
//!   sans-IO, panic-free parser; the Delivery Service uses it to order and police Commits
//!   (one Commit per group and epoch) without understanding anything else in the message.
//! - [`keypackage`]: validation of uploaded KeyPackages with `openmls` (structure,
//!   signatures, ciphersuite allowlist, Basic credential bound to the signature key,
//!   lifetime against an injected clock). The Authentication Service stores only packages
//!   that passed.
//!
//! [`devkit`] is a small *client-side* helper built on `openmls` that produces real MLS
//! messages (identities, KeyPackages, a two-member group). The node's own request path never
//! uses it; it exists for the self-check binary, integration tests and benchmarks.
//!
//! What this module deliberately does not do: hold private keys of any group member,
//! decrypt `PrivateMessage` content, verify membership tags or signatures of group messages
//! (the server has no group state to check them against), or interpret Welcome/GroupInfo
//! contents.

pub mod devkit;
pub mod framing;
pub mod keypackage;

pub use framing::{ContentHeader, ContentType, Framing, FramingError, WireFormat, peek};
pub use keypackage::{
    KeyPackageError, KeyPackagePolicy, LifetimeClock, ValidatedKeyPackage, validate,
};
