//! Header rules of the proxy: hop-by-hop headers are stripped both ways; the client's
//! credentials ([`CREDENTIALS`]) never reach a backend; a backend's `X-Olla-*`
//! headers never reach the client; forwarding headers (`X-Forwarded-*`, `X-Real-IP`, `Via`) are
//! added outbound, and the routing headers (`X-Olla-*`, `X-Served-By`, `Via`) inbound.
//!
//! A client's own `X-Forwarded-For`, `X-Real-IP`, `Forwarded` and `X-Forwarded-Proto/Host` are
//! believed only when the socket peer is a trusted proxy (`server.rate_limits`); otherwise they
//! are replaced by what olla saw. Values olla echoes from a request into a header (the model
//! name) go through [`echo_value`]: bounded and printable.

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use olla_actors::backend::h1::RequestHead;

use crate::telemetry::trace::context::{TRACEPARENT, TRACESTATE};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Header names olla sets, parsed once at compile time.
pub mod names {
    use http::header::HeaderName;

    pub const X_OLLA_REQUEST_ID: HeaderName = HeaderName::from_static("x-olla-request-id");
    pub const X_OLLA_ENDPOINT: HeaderName = HeaderName::from_static("x-olla-endpoint");
    pub const X_OLLA_BACKEND_TYPE: HeaderName = HeaderName::from_static("x-olla-backend-type");
    pub const X_OLLA_MODEL: HeaderName = HeaderName::from_static("x-olla-model");
    pub const X_OLLA_RESPONSE_TIME: HeaderName = HeaderName::from_static("x-olla-response-time");
    pub const X_OLLA_ROUTING_STRATEGY: HeaderName =
        HeaderName::from_static("x-olla-routing-strategy");
    pub const X_OLLA_ROUTING_DECISION: HeaderName =
        HeaderName::from_static("x-olla-routing-decision");
    pub const X_OLLA_ROUTING_REASON: HeaderName = HeaderName::from_static("x-olla-routing-reason");
    pub const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
    pub const X_PROXIED_BY: HeaderName = HeaderName::from_static("x-proxied-by");
    pub const X_MODEL: HeaderName = HeaderName::from_static("x-model");
    pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
}

/// `Olla/<version>`-style product token (`X-Served-By`, `X-Proxied-By`).
pub const SERVED_BY: &str = concat!("Olla/v", env!("CARGO_PKG_VERSION"));

/// `1.1 olla/<version>` (`Via`).
pub fn via() -> &'static str {
    concat!("1.1 olla/v", env!("CARGO_PKG_VERSION"))
}

/// Credential-bearing header names: a client's are never forwarded to a backend, a backend's
/// never reach the client. The rule itself is the header match below (`kind`); a unit test
/// holds it to this list, so a new credential header is added to both.
pub const CREDENTIALS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "anthropic-api-key",
    "x-auth-token",
    "x-access-token",
    "x-litellm-api-key",
    "ocp-apim-subscription-key",
    "x-amz-security-token",
];

/// What the proxy does with a header of this name, in one match (it compiles to a jump on the
/// name's length and a compare or two, where lists would cost a compare per entry for every
/// header of every request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Connection-level (RFC 9110 §7.6.1 and the legacy ones): stripped both ways.
    HopByHop,
    /// `Connection`: hop-by-hop, and it may list more hop-by-hop names.
    Connection,
    /// Credential-bearing: a client's are never forwarded to a backend, a backend's never
    /// reach the client.
    Credential,
    /// Forwarding headers olla always writes itself; a client's own are replaced (a trusted
    /// proxy's `X-Forwarded-For` and `Via` are chained).
    SetByOlla,
    XForwardedFor,
    Via,
    /// Forwarding headers a client may set; believed only from a trusted proxy.
    Forwarding,
    XForwardedProto,
    XForwardedHost,
    Host,
    ContentLength,
    SetCookie,
    XModel,
    Trace,
    Other,
}

impl Kind {
    fn hop_by_hop(self) -> bool {
        matches!(self, Kind::HopByHop | Kind::Connection)
    }

    fn set_by_olla(self) -> bool {
        matches!(self, Kind::SetByOlla | Kind::XForwardedFor | Kind::Via)
    }

    fn forwarding(self) -> bool {
        matches!(
            self,
            Kind::Forwarding | Kind::XForwardedProto | Kind::XForwardedHost
        )
    }
}

fn kind(name: &str) -> Kind {
    match name {
        "keep-alive" | "proxy-authenticate" | "proxy-connection" | "te" | "trailer"
        | "transfer-encoding" | "upgrade" => Kind::HopByHop,
        "connection" => Kind::Connection,
        // `proxy-authorization` is hop-by-hop too; both rules drop it.
        "authorization"
        | "proxy-authorization"
        | "cookie"
        | "x-api-key"
        | "api-key"
        | "x-goog-api-key"
        | "anthropic-api-key"
        | "x-auth-token"
        | "x-access-token"
        | "x-litellm-api-key"
        | "ocp-apim-subscription-key"
        | "x-amz-security-token" => Kind::Credential,
        "x-real-ip" | "x-proxied-by" => Kind::SetByOlla,
        "x-forwarded-for" => Kind::XForwardedFor,
        "via" => Kind::Via,
        "forwarded" => Kind::Forwarding,
        "x-forwarded-proto" => Kind::XForwardedProto,
        "x-forwarded-host" => Kind::XForwardedHost,
        "host" => Kind::Host,
        "content-length" => Kind::ContentLength,
        "set-cookie" => Kind::SetCookie,
        "x-model" => Kind::XModel,
        "traceparent" | "tracestate" => Kind::Trace,
        _ => Kind::Other,
    }
}

/// The request headers [`outbound_into`] reads as well as copies, found in one pass over the
/// map (each `HeaderMap::get` would hash its name again).
#[derive(Default)]
struct Found<'a> {
    /// The first value of each.
    x_forwarded_for: Option<&'a HeaderValue>,
    via: Option<&'a HeaderValue>,
    host: Option<&'a HeaderValue>,
    connection: bool,
    x_forwarded_proto: bool,
    x_forwarded_host: bool,
}

impl<'a> Found<'a> {
    fn scan(inbound: &'a HeaderMap) -> Self {
        let mut found = Found::default();
        for (k, v) in inbound {
            match kind(k.as_str()) {
                Kind::XForwardedFor => {
                    found.x_forwarded_for.get_or_insert(v);
                }
                Kind::Via => {
                    found.via.get_or_insert(v);
                }
                Kind::Host => {
                    found.host.get_or_insert(v);
                }
                Kind::Connection => found.connection = true,
                Kind::XForwardedProto => found.x_forwarded_proto = true,
                Kind::XForwardedHost => found.x_forwarded_host = true,
                _ => {}
            }
        }
        found
    }
}

/// Longest value olla echoes from a request into a header (e.g. `X-Olla-Model`), in bytes.
pub const MAX_ECHO_LEN: usize = 256;

/// A request-derived value fit to echo in a header: at most [`MAX_ECHO_LEN`] bytes, every
/// character outside visible ASCII and space replaced by `?`. `None` when nothing is left.
pub fn echo_value(s: &str) -> Option<HeaderValue> {
    echo_text(s).and_then(|t| HeaderValue::try_from(t.as_ref()).ok())
}

/// [`echo_value`] as text: `s` itself when it is already fit, else the cleaned copy.
pub fn echo_text(s: &str) -> Option<Cow<'_, str>> {
    if echo_fit(s.as_bytes()) {
        return Some(Cow::Borrowed(s));
    }
    let clean: String = s
        .chars()
        .take(MAX_ECHO_LEN)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    let trimmed = clean.trim();
    if trimmed.is_empty() {
        return None;
    }
    Some(Cow::Owned(trimmed.to_string()))
}

/// Already what [`echo_value`] would make of it: visible ASCII and inner spaces, within
/// [`MAX_ECHO_LEN`].
fn echo_fit(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_ECHO_LEN
        && b.first() != Some(&b' ')
        && b.last() != Some(&b' ')
        && b.iter().all(|&c| c == b' ' || c.is_ascii_graphic())
}

/// [`echo_value`] of a request header's value; a value that is already fit is shared, not
/// rebuilt.
pub fn echo_header(v: &HeaderValue) -> Option<HeaderValue> {
    if echo_fit(v.as_bytes()) {
        return Some(v.clone());
    }
    v.to_str().ok().and_then(echo_value)
}

fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect()
}

/// Where the request came from, for the forwarding headers.
pub struct ClientInfo {
    /// The socket peer.
    pub peer: IpAddr,
    pub tls: bool,
    /// The peer is a trusted proxy: its forwarding headers are believed.
    pub trusted_proxy: bool,
}

impl ClientInfo {
    /// A client at `peer`; `trusted` lists the proxies whose forwarding headers are believed.
    pub fn new(peer: IpAddr, tls: bool, trusted: &[ipnet::IpNet]) -> Self {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        Self {
            peer,
            tls,
            trusted_proxy: trusted.iter().any(|n| n.contains(&peer)),
        }
    }

    /// The client's address as Olla decides it: from a trusted proxy, the first valid
    /// `X-Forwarded-For` entry, else a valid `X-Real-IP`; otherwise the socket peer.
    pub fn client_ip(&self, inbound: &HeaderMap) -> IpAddr {
        if !self.trusted_proxy {
            return self.peer;
        }
        let first_xff = inbound
            .get(names::X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|s| s.trim().parse::<IpAddr>().ok());
        let real_ip = || {
            inbound
                .get(names::X_REAL_IP)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.trim().parse::<IpAddr>().ok())
        };
        first_xff.or_else(real_ip).unwrap_or(self.peer)
    }
}

/// An address as header text. IPv4 is written digit by digit into a stack buffer: through
/// `Display` each address cost about 1,300 instructions, and every proxied request writes two.
enum IpText {
    V4([u8; 15], usize),
    V6(String),
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let IpAddr::V4(v4) = ip else {
            return Self::V6(ip.to_string());
        };
        let mut text = [0u8; 15];
        let mut n = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                text[n] = b'.';
                n += 1;
            }
            if octet >= 100 {
                text[n] = b'0' + octet / 100;
                n += 1;
            }
            if octet >= 10 {
                text[n] = b'0' + octet / 10 % 10;
                n += 1;
            }
            text[n] = b'0' + octet % 10;
            n += 1;
        }
        Self::V4(text, n)
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::V4(text, n) => &text[..*n],
            Self::V6(s) => s.as_bytes(),
        }
    }
}

/// Where outbound header fields go: a [`HeaderMap`] for requests sent through hyper's client,
/// or the bytes of an HTTP/1.1 head ([`RequestHead`]) for the direct pool, which so never
/// builds a map.
pub trait FieldSink {
    fn field(&mut self, name: &HeaderName, value: &HeaderValue);
    /// A field whose value olla wrote; one that is not a valid header value is left out.
    fn field_bytes(&mut self, name: &HeaderName, value: &[u8]);
}

impl FieldSink for HeaderMap {
    fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.append(name, value.clone());
    }

    fn field_bytes(&mut self, name: &HeaderName, value: &[u8]) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            self.append(name, v);
        }
    }
}

impl FieldSink for RequestHead {
    fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        RequestHead::field(self, name, value);
    }

    fn field_bytes(&mut self, name: &HeaderName, value: &[u8]) {
        RequestHead::field_bytes(self, name, value);
    }
}

/// What olla sets on one upstream attempt beside the client's own headers.
pub struct Outbound<'a> {
    pub client: &'a ClientInfo,
    /// The model the backend is asked for (`X-Model`).
    pub model: Option<&'a str>,
    /// The backend's configured headers and auth: they replace any other header of their name.
    pub backend_headers: &'a [(HeaderName, HeaderValue)],
    /// The attempt's `traceparent` and `tracestate` (none: the client's is dropped), when the
    /// request is traced: they replace any other of their name.
    pub trace: Option<(&'a HeaderValue, Option<&'a HeaderValue>)>,
}

/// Writes the outbound headers to `sink`, each name once: the client's without hop-by-hop,
/// `Host`, credentials and `Content-Length` (the body is re-sent whole); the forwarding headers
/// (a client's own `X-Forwarded-Proto`/`-Host` kept only from a trusted proxy); `X-Model`; the
/// backend's configured headers and auth, which win over all of these; and the trace context,
/// which wins over everything.
pub fn outbound_into(inbound: &HeaderMap, o: &Outbound<'_>, sink: &mut impl FieldSink) {
    let client = o.client;
    let found = Found::scan(inbound);
    let listed = if found.connection {
        connection_listed(inbound)
    } else {
        Vec::new()
    };
    let model = o.model.and_then(echo_text);
    let peer = IpText::new(client.peer);
    let prev_xff = found
        .x_forwarded_for
        .and_then(|v| v.to_str().ok())
        .filter(|prev| client.trusted_proxy && !prev.trim().is_empty());
    let chained_xff = prev_xff.map(|prev| [prev.as_bytes(), b", ", peer.as_bytes()].concat());
    let real_ip = client.client_ip(inbound);
    let real_ip = (real_ip != client.peer).then(|| IpText::new(real_ip));
    let via_chain = found
        .via
        .and_then(|v| v.to_str().ok())
        .map(|prev| format!("{prev}, {}", via()));
    // A later writer of a name replaces every earlier one: the trace context, then the
    // backend's headers (the last of a repeated name), then olla's own.
    let traced = |name: &str| o.trace.is_some() && (name == "traceparent" || name == "tracestate");
    let by_backend = |name: &str| o.backend_headers.iter().any(|(b, _)| b.as_str() == name);
    let overridden = |name: &str| traced(name) || by_backend(name);
    for (k, v) in inbound {
        let name = k.as_str();
        let dropped = match kind(name) {
            Kind::Credential | Kind::Host | Kind::ContentLength => true,
            Kind::XModel => model.is_some(),
            Kind::Trace => o.trace.is_some(),
            Kind::SetCookie | Kind::Other => false,
            k if k.hop_by_hop() || k.set_by_olla() => true,
            k => k.forwarding() && !client.trusted_proxy,
        };
        if dropped || listed.contains(k) || by_backend(name) {
            continue;
        }
        sink.field(k, v);
    }
    let mut own = |name: HeaderName, value: &[u8]| {
        if !overridden(name.as_str()) {
            sink.field_bytes(&name, value);
        }
    };
    own(
        names::X_FORWARDED_FOR,
        chained_xff.as_deref().unwrap_or(peer.as_bytes()),
    );
    own(
        names::X_REAL_IP,
        real_ip.as_ref().map_or(peer.as_bytes(), IpText::as_bytes),
    );
    // Kept when a trusted proxy sent them (copied above); otherwise what olla saw.
    if !(client.trusted_proxy && found.x_forwarded_proto) {
        own(
            names::X_FORWARDED_PROTO,
            if client.tls { b"https" } else { b"http" },
        );
    }
    if !(client.trusted_proxy && found.x_forwarded_host) {
        if let Some(host) = found.host {
            own(names::X_FORWARDED_HOST, host.as_bytes());
        }
    }
    own(
        http::header::VIA,
        via_chain
            .as_ref()
            .map_or(via().as_bytes(), |c| c.as_bytes()),
    );
    own(names::X_PROXIED_BY, SERVED_BY.as_bytes());
    if let Some(m) = &model {
        own(names::X_MODEL, m.as_bytes());
    }
    for (i, (k, v)) in o.backend_headers.iter().enumerate() {
        let repeated_later = o.backend_headers[i + 1..].iter().any(|(b, _)| b == k);
        if !repeated_later && !traced(k.as_str()) {
            sink.field(k, v);
        }
    }
    if let Some((traceparent, tracestate)) = o.trace {
        sink.field(&TRACEPARENT, traceparent);
        if let Some(v) = tracestate {
            sink.field(&TRACESTATE, v);
        }
    }
}

/// [`outbound_into`] a new header map (requests sent through hyper's client).
pub fn outbound(inbound: &HeaderMap, o: &Outbound<'_>) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(inbound.len() + 8);
    outbound_into(inbound, o, &mut out);
    out
}

/// Cleans a backend's response headers: hop-by-hop, `Set-Cookie`, auth headers, the backend's
/// own configured header names, and every `X-Olla-*` removed. Filtered in place: what a
/// backend sends is kept without being hashed again, and only the names to drop (usually
/// none or one or two) are looked up.
pub fn inbound_response(
    mut upstream: HeaderMap,
    backend_headers: &[(HeaderName, HeaderValue)],
) -> HeaderMap {
    let listed = connection_listed(&upstream);
    let dropped: Vec<HeaderName> = upstream
        .keys()
        .filter(|k| {
            let name = k.as_str();
            let kind = kind(name);
            kind.hop_by_hop()
                || matches!(kind, Kind::Credential | Kind::SetCookie)
                || name.starts_with("x-olla-")
                || listed.contains(k)
                || backend_headers.iter().any(|(b, _)| b == *k)
        })
        .cloned()
        .collect();
    for k in &dropped {
        upstream.remove(k);
    }
    upstream.reserve(olla_actors::backend::h1::RESPONSE_HEADROOM);
    upstream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "192.168.100.9",
            "1.10.100.200",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(
                IpText::new(ip).as_bytes(),
                ip.to_string().as_bytes(),
                "{ip}"
            );
        }
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    /// The outbound map of an untraced attempt.
    fn plain(
        inbound: &HeaderMap,
        client: &ClientInfo,
        model: Option<&str>,
        backend_headers: &[(HeaderName, HeaderValue)],
    ) -> HeaderMap {
        outbound(
            inbound,
            &Outbound {
                client,
                model,
                backend_headers,
                trace: None,
            },
        )
    }

    #[test]
    fn backend_headers_win_over_olla_s_own_and_the_last_of_a_name_wins() {
        let inbound = map(&[("x-model", "client"), ("x-tenant", "client")]);
        let client = ClientInfo::new("10.1.2.3".parse().unwrap(), false, &[]);
        let backend = vec![
            (names::X_FORWARDED_PROTO, HeaderValue::from_static("https")),
            (
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("first"),
            ),
            (
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("second"),
            ),
        ];
        let out = plain(&inbound, &client, None, &backend);
        assert_eq!(out.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(out["x-forwarded-proto"], "https");
        let tenants: Vec<_> = out.get_all("x-tenant").iter().collect();
        assert_eq!(tenants, ["second"]);
        assert_eq!(
            out["x-model"], "client",
            "no model: the client's X-Model stays"
        );
        let out = plain(&inbound, &client, Some("m"), &backend);
        let models: Vec<_> = out.get_all("x-model").iter().collect();
        assert_eq!(models, ["m"]);
    }

    #[test]
    fn the_trace_context_replaces_the_client_s_and_the_backend_s() {
        let inbound = map(&[("traceparent", "00-client"), ("tracestate", "client=1")]);
        let client = ClientInfo::new("10.1.2.3".parse().unwrap(), false, &[]);
        let backend = vec![(TRACEPARENT, HeaderValue::from_static("00-backend"))];
        let ours = HeaderValue::from_static("00-ours");
        let state = HeaderValue::from_static("ours=1");
        let traced = |tracestate| {
            outbound(
                &inbound,
                &Outbound {
                    client: &client,
                    model: None,
                    backend_headers: &backend,
                    trace: Some((&ours, tracestate)),
                },
            )
        };
        let out = traced(Some(&state));
        assert_eq!(
            out.get_all("traceparent").iter().collect::<Vec<_>>(),
            ["00-ours"]
        );
        assert_eq!(
            out.get_all("tracestate").iter().collect::<Vec<_>>(),
            ["ours=1"]
        );
        let out = traced(None);
        assert_eq!(out["traceparent"], "00-ours");
        assert!(
            !out.contains_key("tracestate"),
            "the client's is not passed on"
        );
        let untraced = plain(&inbound, &client, None, &backend);
        assert_eq!(untraced["traceparent"], "00-backend");
        assert_eq!(untraced["tracestate"], "client=1");
    }

    #[test]
    fn outbound_strips_credentials_and_hop_by_hop_and_adds_forwarding() {
        let inbound = map(&[
            ("authorization", "Bearer client-secret"),
            ("cookie", "a=b"),
            ("x-api-key", "k"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("host", "olla.local:40114"),
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
        ]);
        let client = ClientInfo::new("10.1.2.3".parse().unwrap(), false, &[]);
        let backend = vec![(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer backend"),
        )];
        let out = plain(&inbound, &client, Some("llama3"), &backend);
        assert_eq!(out["authorization"], "Bearer backend");
        assert!(!out.contains_key("cookie") && !out.contains_key("x-api-key"));
        assert!(!out.contains_key("connection") && !out.contains_key("x-custom-hop"));
        assert!(!out.contains_key("host"));
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-forwarded-host"], "olla.local:40114");
        assert_eq!(out["x-real-ip"], "10.1.2.3");
        assert_eq!(out["x-model"], "llama3");
        assert_eq!(out["x-request-id"], "abc");
        assert!(out["via"].to_str().unwrap().starts_with("1.1 olla/"));
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_proxies() {
        let inbound = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-real-ip", "2.2.2.2"),
            ("forwarded", "for=3.3.3.3"),
            ("x-forwarded-proto", "https"),
        ]);
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy = ClientInfo::new("10.0.0.1".parse().unwrap(), false, &trusted);
        let out = plain(&inbound, &proxy, None, &[]);
        assert_eq!(out["x-forwarded-for"], "1.1.1.1, 10.0.0.1");
        assert_eq!(out["x-real-ip"], "1.1.1.1");
        assert_eq!(out["forwarded"], "for=3.3.3.3");
        assert_eq!(out["x-forwarded-proto"], "https");

        let stranger = ClientInfo::new("192.0.2.9".parse().unwrap(), false, &trusted);
        let out = plain(&inbound, &stranger, None, &[]);
        assert_eq!(out["x-forwarded-for"], "192.0.2.9");
        assert_eq!(out["x-real-ip"], "192.0.2.9");
        assert!(!out.contains_key("forwarded"));
        assert_eq!(out["x-forwarded-proto"], "http");

        let junk = map(&[("x-forwarded-for", "not-an-ip"), ("x-real-ip", "4.4.4.4")]);
        assert_eq!(proxy.client_ip(&junk), "4.4.4.4".parse::<IpAddr>().unwrap());
        let mapped = ClientInfo::new("::ffff:10.0.0.7".parse().unwrap(), false, &trusted);
        assert!(
            mapped.trusted_proxy,
            "an IPv4-mapped peer matches IPv4 CIDRs"
        );
    }

    #[test]
    fn names_are_classified_by_their_rule() {
        let hop_by_hop = [
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ];
        for n in hop_by_hop {
            assert!(kind(n).hop_by_hop(), "{n}");
        }
        for n in CREDENTIALS {
            assert_eq!(kind(n), Kind::Credential, "{n}");
        }
        for n in ["x-forwarded-for", "x-real-ip", "via", "x-proxied-by"] {
            assert!(kind(n).set_by_olla(), "{n}");
        }
        for n in ["forwarded", "x-forwarded-proto", "x-forwarded-host"] {
            assert!(kind(n).forwarding(), "{n}");
        }
        for n in [
            "content-type",
            "accept",
            "user-agent",
            "x-request-id",
            "authorizatio",
            "te2",
            "x-olla-model",
            "",
        ] {
            assert_eq!(kind(n), Kind::Other, "{n}");
        }
    }

    #[test]
    fn every_listed_credential_is_stripped_both_ways() {
        let mut inbound = HeaderMap::new();
        for c in CREDENTIALS {
            inbound.insert(
                HeaderName::from_static(c),
                HeaderValue::from_static("secret"),
            );
        }
        let client = ClientInfo::new("127.0.0.1".parse().unwrap(), false, &[]);
        let out = plain(&inbound, &client, None, &[]);
        assert!(out.values().all(|v| v != "secret"), "{out:?}");
        assert!(inbound_response(inbound, &[]).is_empty());
    }

    #[test]
    fn echoed_values_are_bounded_and_printable() {
        let long = "m".repeat(100_000);
        assert_eq!(echo_value(&long).unwrap().len(), MAX_ECHO_LEN);
        assert_eq!(echo_value("llama3:8b").unwrap(), "llama3:8b");
        assert_eq!(echo_value("a\u{7f}b\u{e9}").unwrap(), "a?b?");
        assert_eq!(echo_value("  "), None);
    }

    #[test]
    fn a_header_echo_is_the_value_echo() {
        let long = "m".repeat(300);
        let mut cases = vec![
            HeaderValue::from_static("chat-42"),
            HeaderValue::from_static("a b"),
            HeaderValue::from_static(" padded "),
            HeaderValue::from_static("  "),
            HeaderValue::from_static(""),
            HeaderValue::from_static("tab\there"),
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
            HeaderValue::from_bytes(b"\xffz").unwrap(),
            HeaderValue::from_str(&long).unwrap(),
        ];
        cases.push(HeaderValue::from_str(&"n".repeat(MAX_ECHO_LEN)).unwrap());
        for v in cases {
            let want = v.to_str().ok().and_then(echo_value);
            assert_eq!(echo_header(&v), want, "{v:?}");
        }
    }

    #[test]
    fn response_drops_upstream_olla_headers_and_cookies() {
        let upstream = map(&[
            ("x-olla-endpoint", "spoofed"),
            ("set-cookie", "s=1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/event-stream"),
            ("x-tenant-id", "acme"),
        ]);
        let backend = vec![(
            HeaderName::from_static("x-tenant-id"),
            HeaderValue::from_static("acme"),
        )];
        let out = inbound_response(upstream.clone(), &backend);
        assert_eq!(out.len(), 1);
        assert_eq!(out["content-type"], "text/event-stream");
    }

    #[test]
    fn response_keeps_every_value_of_a_kept_header_and_drops_connection_listed_ones() {
        let mut upstream = HeaderMap::with_capacity(4);
        for (k, v) in [
            ("link", "<a>; rel=preload"),
            ("x-trace-hop", "1"),
            ("link", "<b>; rel=preload"),
            ("connection", "x-trace-hop, keep-alive"),
            ("x-trace-hop", "2"),
            ("content-type", "application/json"),
        ] {
            upstream.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = inbound_response(upstream, &[]);
        let links: Vec<_> = out.get_all("link").iter().collect();
        assert_eq!(links, ["<a>; rel=preload", "<b>; rel=preload"]);
        assert!(!out.contains_key("x-trace-hop") && !out.contains_key("connection"));
        assert_eq!(out.len(), 3);
        assert!(
            out.capacity() >= out.len() + olla_actors::backend::h1::RESPONSE_HEADROOM,
            "room for olla's headers"
        );
    }
}

#[cfg(test)]
mod prop {
    use super::*;
    use proptest::prelude::*;

    /// Header names a client might send: olla's own, forwarding, hop-by-hop, credentials,
    /// trace context and plain ones.
    const NAMES: &[&str] = &[
        "content-type",
        "accept",
        "x-request-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-real-ip",
        "forwarded",
        "via",
        "x-model",
        "x-proxied-by",
        "connection",
        "keep-alive",
        "authorization",
        "cookie",
        "host",
        "content-length",
        "traceparent",
        "tracestate",
        "x-tenant",
    ];

    fn fields_of(head: &[u8]) -> Vec<(String, String)> {
        let text = std::str::from_utf8(head).unwrap();
        let mut fields: Vec<(String, String)> = text
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        fields.sort();
        fields
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The bytes written for the direct pool carry the same fields as the map built for
        /// hyper's client, whatever the client sent.
        #[test]
        fn the_wire_head_has_the_fields_of_the_map(
            sent in proptest::collection::vec((0..NAMES.len(), "[a-z0-9 ,=.]{0,12}"), 0..12),
            backend in proptest::collection::vec((0..NAMES.len(), "[a-z0-9]{1,6}"), 0..3),
            trusted in any::<bool>(),
            model in proptest::option::of("[a-z0-9:]{1,8}"),
            traced in any::<bool>(),
        ) {
            let mut inbound = HeaderMap::new();
            for (i, v) in &sent {
                inbound.append(HeaderName::from_static(NAMES[*i]), HeaderValue::from_str(v).unwrap());
            }
            let backend: Vec<(HeaderName, HeaderValue)> = backend
                .iter()
                .filter(|(i, _)| !matches!(NAMES[*i], "host" | "content-length" | "connection" | "keep-alive"))
                .map(|(i, v)| (HeaderName::from_static(NAMES[*i]), HeaderValue::from_str(v).unwrap()))
                .collect();
            let nets: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
            let client = ClientInfo::new("10.0.0.1".parse().unwrap(), false, if trusted { &nets } else { &[] });
            let tp = HeaderValue::from_static("00-t");
            let o = Outbound {
                client: &client,
                model: model.as_deref(),
                backend_headers: &backend,
                trace: traced.then_some((&tp, None)),
            };
            let map = outbound(&inbound, &o);
            let mut head = RequestHead::new(&http::Method::GET, "/", None, 0, 0).unwrap();
            outbound_into(&inbound, &o, &mut head);
            let mut want: Vec<(String, String)> = map
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            want.sort();
            let bytes = head.as_bytes().to_vec();
            prop_assert_eq!(fields_of(&bytes), want);
            for name in map.keys() {
                let n = map.get_all(name).iter().count();
                let from_client = inbound.get_all(name).iter().count();
                prop_assert!(n == 1 || n == from_client, "{} written {} times", name, n);
            }
        }
    }
}
