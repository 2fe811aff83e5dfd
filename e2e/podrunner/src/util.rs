//! Small helpers: timestamps, PEM, IP pool, pod keys.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

/// RFC 3339 timestamp with second precision (`metav1.Time`).
pub(crate) fn now() -> String {
    let s = Timestamp::now().as_second();
    Timestamp::from_second(s)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// RFC 3339 timestamp with exactly six fractional digits (`metav1.MicroTime`).
pub(crate) fn now_micro() -> String {
    let us = Timestamp::now().as_microsecond();
    let (s, frac) = (us.div_euclid(1_000_000), us.rem_euclid(1_000_000));
    let base = Timestamp::from_second(s)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S").to_string())
        .unwrap_or_default();
    format!("{base}.{frac:06}Z")
}

/// `namespace/name` of a pod.
pub(crate) fn pod_key(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or("")
    )
}

/// PEM encoding of one DER block.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub(crate) fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Pod IPs: 127.<octet>.y.z, never .0 or .255 in the last octet.
pub(crate) struct IpPool {
    octet: u8,
    used: BTreeSet<Ipv4Addr>,
}

impl IpPool {
    pub(crate) fn new(octet: u8) -> Self {
        Self {
            octet,
            used: BTreeSet::new(),
        }
    }

    /// The lowest free address.
    pub(crate) fn alloc(&mut self) -> Option<Ipv4Addr> {
        for y in 0..=255u8 {
            for z in 1..=254u8 {
                let ip = Ipv4Addr::new(127, self.octet, y, z);
                if self.used.insert(ip) {
                    return Some(ip);
                }
            }
        }
        None
    }

    pub(crate) fn free(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn micro_time_has_six_digits() {
        let t = now_micro();
        let frac = t.rsplit_once('.').map(|(_, f)| f).unwrap_or("");
        assert_eq!(frac.len(), 7, "{t}");
        assert!(now().ends_with('Z'));
    }

    #[test]
    fn ip_pool_reuses_freed_addresses() {
        let mut pool = IpPool::new(88);
        let a = pool.alloc();
        let b = pool.alloc();
        assert_eq!(a, Some(Ipv4Addr::new(127, 88, 0, 1)));
        assert_eq!(b, Some(Ipv4Addr::new(127, 88, 0, 2)));
        if let Some(a) = a {
            pool.free(a);
        }
        assert_eq!(pool.alloc(), a);
    }
}
