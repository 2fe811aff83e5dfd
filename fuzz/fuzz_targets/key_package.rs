//! The Authentication Service's KeyPackage check (`qpq_node::mls::keypackage::validate`) on
//! untrusted uploads: decoding (bare or wrapped), canonical re-encoding, ciphersuite policy,
//! signature, credential binding and lifetime.
//!
//! Beyond "never panics": an accepted package is stored byte for byte, validating it again
//! gives the same result, and the time it is served until lies after now and within the TTL.

#![no_main]

use std::time::{SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use qpq_node::mls::keypackage::{KeyPackagePolicy, validate};

fuzz_target!(|data: &[u8]| {
    // The seeds' lifetimes are relative to the system clock, as openmls's own check is.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let policy = KeyPackagePolicy::default();
    let Ok(accepted) = validate(data, now_ms, &policy) else {
        return;
    };
    assert_eq!(
        accepted.bytes, data,
        "an accepted package is stored as uploaded"
    );
    let again = validate(&accepted.bytes, now_ms, &policy).expect("re-validation refused");
    assert_eq!(again.identity, accepted.identity);
    assert_eq!(again.ciphersuite, accepted.ciphersuite);
    assert!(accepted.expires_at_ms > now_ms, "served although expired");
    assert!(
        accepted.expires_at_ms <= now_ms.saturating_add(policy.ttl_ms),
        "served beyond the TTL"
    );
});
