//! Config loading: any text, parsed and validated as a file in config/ (so relative TLS and
//! secret paths resolve), must give a table or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/fuzz.yaml");
    if let Ok(loaded) = cohort::config::parse(&file, text) {
        let metrics = cohort::metrics::Metrics::new();
        if let Ok(table) = cohort::table::from_loaded(&loaded, &metrics, None, 1) {
            let _ = table.warnings();
        }
    }
});
