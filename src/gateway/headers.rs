//! Which headers cross the gateway, in both directions.
//!
//! Hop-by-hop headers describe one connection, not the message, so they stop here
//! (RFC 9110 §7.6.1): `connection`, `keep-alive`, `te`, `trailer`, `transfer-encoding`,
//! `upgrade`, every `proxy-*` header, and any header the `connection` header names.
//! Towards a node the gateway also drops `host` and `content-length` (the client library
//! sets both for the node's URL and the buffered body) and appends the client's address to
//! `x-forwarded-for`.

use std::net::IpAddr;

use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers besides `proxy-*`.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The `x-forwarded-for` header.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether a header describes one connection rather than the message.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name.as_str().starts_with("proxy-")
}

/// The end-to-end headers: all but the hop-by-hop ones and those `connection` names.
pub fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    let mut kept = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !is_hop_by_hop(name) && !named.iter().any(|token| token == name.as_str()) {
            kept.append(name.clone(), value.clone());
        }
    }
    kept
}

/// The headers to send to a node for a client request from `client`.
pub fn to_node(headers: &HeaderMap, client: IpAddr) -> HeaderMap {
    let mut kept = end_to_end(headers);
    kept.remove(header::HOST);
    kept.remove(header::CONTENT_LENGTH);
    let earlier: Vec<&str> = kept
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let chain = if earlier.is_empty() {
        client.to_string()
    } else {
        format!("{}, {client}", earlier.join(", "))
    };
    // Built from valid header text, commas and an IP address: always a valid value.
    if let Ok(value) = HeaderValue::from_str(&chain) {
        kept.insert(X_FORWARDED_FOR, value);
    }
    kept
}

/// The headers to send back to the client for a node's response.
pub fn to_client(headers: &HeaderMap) -> HeaderMap {
    end_to_end(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    fn names(map: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_headers_stop_at_the_gateway() {
        let client = headers(&[
            ("connection", "keep-alive, x-session-hint"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-connection", "keep-alive"),
            ("x-session-hint", "named by connection"),
            ("authorization", "Basic d3JpdGVrZXk6"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("accept", "*/*"),
            ("accept", "application/json"),
        ]);
        let kept = end_to_end(&client);
        assert_eq!(
            names(&kept),
            [
                "accept",
                "authorization",
                "content-encoding",
                "content-type"
            ]
        );
        assert_eq!(kept.get_all("accept").iter().count(), 2, "repeats survive");
    }

    #[test]
    fn requests_to_nodes_lose_host_and_length_and_gain_the_client_address() {
        let client = headers(&[
            ("host", "gateway:8000"),
            ("content-length", "42"),
            ("content-type", "application/json"),
        ]);
        let kept = to_node(&client, "10.0.0.7".parse().expect("ip"));
        assert_eq!(names(&kept), ["content-type", "x-forwarded-for"]);
        assert_eq!(kept["x-forwarded-for"], "10.0.0.7");
    }

    #[test]
    fn the_client_address_is_appended_to_an_existing_chain() {
        let client = headers(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
        ]);
        let kept = to_node(&client, "::1".parse().expect("ip"));
        assert_eq!(kept.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(kept["x-forwarded-for"], "203.0.113.1, 198.51.100.2, ::1");
    }

    #[test]
    fn responses_keep_their_length_and_retry_after() {
        let node = headers(&[
            ("content-length", "17"),
            ("retry-after", "1"),
            ("connection", "close"),
        ]);
        assert_eq!(names(&to_client(&node)), ["content-length", "retry-after"]);
    }
}
