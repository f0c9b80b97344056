//! Path normalisation and the request-head checks: any path normalises to a rooted path
//! without empty or dot segments that normalises to itself, or is refused.
#![no_main]

use cohort::hygiene::{self, Policy, Underscores};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    for reject in [true, false] {
        let Some(n) = hygiene::normalize(&path, reject) else {
            continue;
        };
        if n == "*" {
            continue;
        }
        assert!(n.starts_with('/') && !n.contains("//"), "{path:?} -> {n:?}");
        for seg in n.split('/') {
            let s = seg.to_ascii_lowercase().replace("%2e", ".");
            assert!(s != "." && s != "..", "{path:?} -> {n:?}");
        }
        let again = hygiene::normalize(&n, reject).map(|c| c.into_owned());
        assert_eq!(again.as_deref(), Some(n.as_ref()), "{path:?}");
    }
    // The same bytes as a request target through the whole head check.
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    let mut req = http::Request::new(());
    *req.uri_mut() = uri;
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("h"));
    let (mut parts, ()) = req.into_parts();
    let policy = Policy {
        normalize_path: true,
        underscores: Underscores::Drop,
        ..Policy::default()
    };
    if let Ok(Some(n)) = hygiene::check(&mut parts, &policy) {
        assert_eq!(parts.uri.path(), n);
    }
});
