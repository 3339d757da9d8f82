//! What arrives from the fleet bus, on arbitrary bytes: trust record
//! envelopes (verified against fixed node and operator keys), packed
//! bundles (their claimed name and version), and identities. Nothing may
//! panic; an identity that parses prints as text that parses to itself.
#![no_main]

use std::sync::OnceLock;

use forge_agent::{
    fleet::{Identity, SignedRecord, wire},
    sign::{PublicKey, TrustConfig, trust::TrustedKey},
};
use libfuzzer_sys::fuzz_target;

const NODE_A: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";
const OPS: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn trust(label: &str, hex: &str) -> TrustConfig {
    let key = PublicKey::parse(hex, "fuzz key").expect("a valid key");
    TrustConfig::new(1, vec![TrustedKey { key, label: label.into() }], "fuzz").expect("a trust config")
}

fn keys() -> &'static (TrustConfig, TrustConfig) {
    static K: OnceLock<(TrustConfig, TrustConfig)> = OnceLock::new();
    K.get_or_init(|| (trust("node-a", NODE_A), trust("ops", OPS)))
}

fuzz_target!(|data: &[u8]| {
    let (nodes, operators) = keys();
    if let Ok(v) = SignedRecord::verify(data, nodes, operators) {
        assert!(v.record.node == "node-a" || v.record.node == "ops");
    }
    let _ = wire::peek(data);
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(id) = Identity::parse(s)
    {
        assert_eq!(Identity::parse(&id.to_string()).ok(), Some(id), "an identity prints as itself");
    }
});
