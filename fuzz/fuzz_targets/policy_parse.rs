//! Policy YAML on arbitrary input: parsing and, when it parses, compiling
//! must return errors, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(policy) = forge_agent::policy::Policy::from_yaml(text, "fuzz") {
        let _ = forge_agent::policy::compile(&policy, "fuzz", 1);
    }
});
