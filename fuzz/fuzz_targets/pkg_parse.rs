//! The `.forgepkg` parser on arbitrary bytes: whatever parses re-encodes to
//! exactly the input (the format has one encoding per package), and checking
//! the payload digests of a parsed package never panics.
#![no_main]

use forge_agent::wasm::Package;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Package::parse(data) {
        assert_eq!(p.to_bytes(), data, "a parsed package has exactly one encoding");
        let _ = p.check_digests();
    }
});
