//! Which address a request came from, for allow-lists (Payme calls come only from its own
//! network). Behind a reverse proxy the TCP peer is the proxy: `X-Forwarded-For` is believed
//! only when the peer is one of `server.trusted_proxies`, and then read from the right, skipping
//! trusted hops, so a payer-supplied left part can never choose the answer.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::IpNet;

use crate::state::AppState;

pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return peer;
        };
        for part in text.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                // A hop we cannot read: nothing left of it can be trusted either.
                Err(_) => return peer,
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !trusted(ip))
        .unwrap_or(peer)
}

/// Whether `ip` may call an endpoint guarded by `allowed` (empty = anyone).
pub fn allowed(ip: IpAddr, allowed: &[IpNet]) -> bool {
    allowed.is_empty() || allowed.iter().any(|net| net.contains(&ip))
}

/// The caller of a request (see [`resolve`]); `None` when the server was started without
/// connect info. Extracting it never fails.
pub struct Caller(pub Option<IpAddr>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(Caller(peer.map(|ConnectInfo(addr)| {
            resolve(
                addr.ip(),
                &parts.headers,
                &state.settings.server.trusted_proxies,
            )
        })))
    }
}

/// Whether a caller passes an allow-list. An unknown caller passes only an empty list: with
/// an allow-list configured, not knowing who called means refusing.
pub fn admitted(caller: Option<IpAddr>, allow_list: &[IpNet]) -> bool {
    allow_list.is_empty() || caller.is_some_and(|ip| allowed(ip, allow_list))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().expect("header"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = xff(&["185.234.113.5"]);
        assert_eq!(resolve(ip("203.0.113.9"), &h, &[]), ip("203.0.113.9"));
        assert_eq!(
            resolve(ip("203.0.113.9"), &h, &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let proxies = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let peer = ip("10.0.0.2");
        assert_eq!(
            resolve(peer, &xff(&["185.234.113.5"]), &proxies),
            ip("185.234.113.5")
        );
        // A spoofed left part does not win over the hop the proxy saw.
        assert_eq!(
            resolve(peer, &xff(&["185.234.113.5, 198.51.100.7"]), &proxies),
            ip("198.51.100.7")
        );
        assert_eq!(
            resolve(
                peer,
                &xff(&["198.51.100.7", "185.234.113.5, 10.1.1.1"]),
                &proxies
            ),
            ip("185.234.113.5")
        );
        assert_eq!(resolve(peer, &xff(&[]), &proxies), peer);
        assert_eq!(resolve(peer, &xff(&["10.9.9.9"]), &proxies), peer);
        assert_eq!(
            resolve(peer, &xff(&["not-an-ip, 185.234.113.5"]), &proxies),
            peer
        );
        assert_eq!(
            resolve(peer, &xff(&["2001:db8::1"]), &proxies),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn an_empty_allow_list_allows_everyone() {
        let payme = nets(&["185.234.113.0/28"]);
        assert!(allowed(ip("185.234.113.1"), &payme));
        assert!(allowed(ip("185.234.113.15"), &payme));
        assert!(!allowed(ip("185.234.113.16"), &payme));
        assert!(!allowed(ip("127.0.0.1"), &payme));
        assert!(allowed(ip("127.0.0.1"), &[]));
        assert!(admitted(None, &[]), "no list, no question");
        assert!(
            !admitted(None, &payme),
            "unknown caller with a list: refused"
        );
        assert!(admitted(Some(ip("185.234.113.3")), &payme));
    }
}
