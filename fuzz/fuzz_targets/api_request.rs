//! The local API's request parser on arbitrary bytes: it answers with a
//! request or an error, never panics; a parsed request re-serializes and
//! parses to the same request.
#![no_main]

use forge_agent::api::protocol::{MAX_REQUEST, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request(data) {
        let again = serde_json::to_vec(&req).expect("a request serializes");
        if again.len() <= MAX_REQUEST {
            assert_eq!(parse_request(&again).expect("a serialized request parses"), req);
        }
    }
});
