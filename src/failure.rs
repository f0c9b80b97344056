//! The one failure taxonomy of the request path: where a failure came from (the client, the
//! upstream exchange, or cohort itself), the status it is answered with, the `reason` label it is counted
//! under and the fields it is logged with. Every local answer is built here, by
//! [`Failure::response`].
//!
//! Owns: the failure kinds, their statuses, bodies and labels. Must not touch: anything of the
//! crate (a leaf): the request path counts a failure with the handles the table holds, aligned
//! with [`Downstream::LABELS`] and [`Upstream::LABELS`]; telemetry only gets those strings.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

/// Why a request failed, by where the fault lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The client's request, refused: counted in `cohort_rejected_requests_total`.
    Downstream(Downstream),
    /// No route serves the request: counted in `cohort_unrouted_requests_total`.
    Unrouted,
    /// The upstream exchange: counted in `cohort_upstream_failures_total`.
    Upstream(Upstream),
    /// cohort itself: a request it could not build or send, whoever's input led there.
    /// Answered 500 and counted in `cohort_internal_errors_total`.
    Internal(Internal),
}

/// What was wrong with the client's request; the `reason` label of
/// `cohort_rejected_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Downstream {
    UriTooLong = 0,
    HeadersTooLarge = 1,
    BadHost = 2,
    UnderscoreHeader = 3,
    BadPath = 4,
    BodyTooLarge = 5,
    BodyTimeout = 6,
    /// A request body the client framed wrongly (a bad chunk size) or abandoned part way.
    BadBody = 7,
    /// A request body slower than `body_min_rate` (a trickle that never falls silent).
    BodyTooSlow = 8,
    /// An HTTP/1.x head with both Transfer-Encoding and Content-Length (a smuggling attempt
    /// or a broken client): refused, never forwarded.
    TeAndCl = 9,
}

impl Downstream {
    pub const ALL: [Downstream; 10] = [
        Self::UriTooLong,
        Self::HeadersTooLarge,
        Self::BadHost,
        Self::UnderscoreHeader,
        Self::BadPath,
        Self::BodyTooLarge,
        Self::BodyTimeout,
        Self::BadBody,
        Self::BodyTooSlow,
        Self::TeAndCl,
    ];

    /// The `reason` labels, aligned with [`Downstream::ALL`].
    pub const LABELS: [&'static str; 10] = [
        "uri_too_long",
        "headers_too_large",
        "bad_host",
        "underscore_header",
        "bad_path",
        "body_too_large",
        "body_timeout",
        "bad_body",
        "body_too_slow",
        "te_and_cl",
    ];

    pub fn as_str(self) -> &'static str {
        Self::LABELS[self as usize]
    }

    /// Whether the request's body may still be on the wire unread, so the connection cannot
    /// carry another request.
    fn body_unread(self) -> bool {
        matches!(
            self,
            Self::BodyTooLarge
                | Self::BodyTimeout
                | Self::BodyTooSlow
                | Self::BadBody
                | Self::TeAndCl
        )
    }
}

/// How the upstream exchange failed; the `reason` label of `cohort_upstream_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Connect = 0,
    Timeout = 1,
    Reset = 2,
    Tls = 3,
    Protocol = 4,
}

impl Upstream {
    #[cfg(test)]
    pub const ALL: [Upstream; 5] = [
        Self::Connect,
        Self::Timeout,
        Self::Reset,
        Self::Tls,
        Self::Protocol,
    ];

    /// The `reason` labels, in the variants' order.
    pub const LABELS: [&'static str; 5] = ["connect", "timeout", "reset", "tls", "protocol"];

    pub fn as_str(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// What cohort got wrong; the `reason` label of `cohort_internal_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Internal {
    /// The upstream request cohort built was refused before it left (its URI or head did
    /// not hold together): a bug to report, not the client's or the backend's fault.
    Request = 0,
}

impl Internal {
    pub const ALL: [Internal; 1] = [Self::Request];

    /// The `reason` labels, aligned with [`Internal::ALL`].
    pub const LABELS: [&'static str; 1] = ["request"];

    pub fn as_str(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

impl Failure {
    pub fn status(self) -> StatusCode {
        match self {
            Failure::Downstream(d) => match d {
                Downstream::UriTooLong => StatusCode::URI_TOO_LONG,
                Downstream::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Downstream::BadHost
                | Downstream::UnderscoreHeader
                | Downstream::BadPath
                | Downstream::BadBody
                | Downstream::TeAndCl => StatusCode::BAD_REQUEST,
                Downstream::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Downstream::BodyTimeout | Downstream::BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            },
            Failure::Unrouted => StatusCode::NOT_FOUND,
            Failure::Upstream(Upstream::Timeout) => StatusCode::GATEWAY_TIMEOUT,
            Failure::Upstream(_) => StatusCode::BAD_GATEWAY,
            Failure::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Failure::Downstream(d) => match d {
                Downstream::UriTooLong => "request URI too long\n",
                Downstream::HeadersTooLarge => "request headers too large\n",
                Downstream::BadHost => "missing, duplicate or inconsistent Host\n",
                Downstream::UnderscoreHeader => "header names with underscores are not accepted\n",
                Downstream::BadPath => "malformed request path\n",
                Downstream::BodyTooLarge => "request body too large\n",
                Downstream::BodyTimeout => "request body too slow\n",
                Downstream::BadBody => "malformed or incomplete request body\n",
                Downstream::BodyTooSlow => "request body sent too slowly\n",
                Downstream::TeAndCl => "both Transfer-Encoding and Content-Length\n",
            },
            Failure::Unrouted => "no route\n",
            Failure::Upstream(Upstream::Timeout) => "upstream timed out\n",
            Failure::Upstream(Upstream::Connect) => "upstream unavailable\n",
            Failure::Upstream(_) => "upstream failed\n",
            Failure::Internal(_) => "internal error\n",
        }
    }

    /// For logs: which side the fault lies on.
    pub fn origin(self) -> &'static str {
        match self {
            Failure::Downstream(_) | Failure::Unrouted => "downstream",
            Failure::Upstream(_) => "upstream",
            Failure::Internal(_) => "internal",
        }
    }

    /// The `reason` label it is counted under; a request no route serves has its own counter
    /// and no reason.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Downstream(d) => d.as_str(),
            Failure::Unrouted => "",
            Failure::Upstream(u) => u.as_str(),
            Failure::Internal(i) => i.as_str(),
        }
    }

    /// The local answer: the status, a one-line text body, and `Connection: close` where the
    /// client's body is left unread.
    pub fn response<B: From<&'static str>>(self) -> Response<B> {
        let mut resp = Response::new(B::from(self.body()));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(self, Failure::Downstream(d) if d.body_unread()) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_align_with_the_variants() {
        for (i, d) in Downstream::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
            assert_eq!(Downstream::LABELS[i], d.as_str());
        }
        for (i, u) in Upstream::ALL.iter().enumerate() {
            assert_eq!(*u as usize, i);
            assert_eq!(Upstream::LABELS[i], u.as_str());
        }
        for (i, n) in Internal::ALL.iter().enumerate() {
            assert_eq!(*n as usize, i);
            assert_eq!(Internal::LABELS[i], n.as_str());
        }
    }

    #[test]
    fn each_origin_answers_with_its_status() {
        let cases = [
            (Failure::Downstream(Downstream::BadHost), 400, "downstream"),
            (Failure::Unrouted, 404, "downstream"),
            (Failure::Upstream(Upstream::Connect), 502, "upstream"),
            (Failure::Upstream(Upstream::Timeout), 504, "upstream"),
            (Failure::Internal(Internal::Request), 500, "internal"),
        ];
        for (failure, status, origin) in cases {
            let resp: Response<String> = failure.response();
            assert_eq!(resp.status().as_u16(), status, "{failure:?}");
            assert_eq!(failure.origin(), origin, "{failure:?}");
        }
        let resp: Response<String> = Failure::Internal(Internal::Request).response();
        assert_eq!(resp.body(), "internal error\n");
        assert!(resp.headers().get(header::CONNECTION).is_none());
    }
}
