//! Conversation pin verification: no value is accepted without a secret, and none panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

const SECRETS: [&[u8]; 2] = [b"fuzz-pin-secret-new-0123456789", b"fuzz-pin-secret-old-0123456789"];

fuzz_target!(|data: &[u8]| {
    assert!(cohort::routing::pin::verify(&SECRETS, data, 0).is_err());
});
