//! Override verification: no value is accepted without the secret, and none panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-override-secret-0123456789";

fuzz_target!(|data: &[u8]| {
    assert!(cohort::signed::verify(SECRET, data, 0).is_err());
    let _ = cohort::signed::looks_signed(data);
    // The input as a cohort name round-trips when it is one.
    if let Ok(name) = std::str::from_utf8(data) {
        if !name.is_empty() {
            let v = cohort::signed::sign(SECRET, name, 10);
            assert_eq!(cohort::signed::verify(SECRET, v.as_bytes(), 9), Ok(name));
        }
    }
});
