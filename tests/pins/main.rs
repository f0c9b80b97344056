//! Conversation pinning end to end, over real sockets: pins hold a conversation through a ramp
//! (and without them the contract's formula moves exactly the expected ones), a rollback
//! overrides them at once, two processes sharing the secret honour each other's pins, refused
//! pins are counted exactly, the judge counts each turn against the cohort that served it, and
//! over TLS the cookie is `Secure` (and HTTP/2 cookie crumbs carry the pin).

#[path = "../support/mod.rs"]
mod support;

mod common;
mod counted;
mod judged;
mod ramp;
mod replicas;
mod secure;
