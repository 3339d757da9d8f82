//! Execution traces from arbitrary bytes: the reader, the verifier and the
//! digests never panic; the reader and the verifier agree on whether the
//! bytes hold an intact chain.
#![no_main]

use std::path::Path;

use forge_agent::dna::{Records, VerifyOptions, verify_reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.dna");
    let entries = Records::from_reader(data, path).map(|r| r.collect::<Result<Vec<_>, _>>());
    let report = verify_reader(data, path, &VerifyOptions::default());
    if let Ok(Ok(entries)) = &entries {
        let _ = forge_agent::digest::workload(entries);
        if let Some(last) = entries.last() {
            let _ = forge_agent::digest::record(entries, last.index);
        }
        if let Ok(r) = &report {
            // An intact chain may still carry a bad checkpoint signature;
            // a broken chain never verifies.
            assert!(r.problem.is_some() || r.records == entries.len() as u64, "{r:?}");
        }
    }
    if let Ok(r) = &report
        && r.ok
    {
        assert!(matches!(entries, Ok(Ok(_))), "verified bytes the reader refuses");
    }
});
