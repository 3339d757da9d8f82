//! The bundle parsers on arbitrary bytes: the manifest (which must accept
//! only its canonical encoding, so whatever parses re-encodes to the same
//! bytes) and the signatures file.
#![no_main]

use forge_agent::sign::{manifest::Manifest, signature::Signatures};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        assert_eq!(m.to_bytes(), data, "a parsed manifest has exactly one encoding");
        assert!(m.signed_message().ends_with(data));
    }
    if let Ok(s) = Signatures::parse(data) {
        let again = Signatures::parse(&s.to_bytes()).expect("re-encoded signatures parse");
        assert_eq!(again.entries().len(), s.entries().len());
    }
});
