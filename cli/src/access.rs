//! `--allow` and `--deny`: which peers are served, by network.
//!
//! A peer inside any `--deny` network is refused; when any `--allow` is
//! given, a peer must also be inside one of them. The check runs right
//! after `accept`, before the connection reaches the application: the
//! socket is closed at once, which the peer sees as an immediate end of
//! stream.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`), or a bare address
/// meaning just that host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| Cidr(IpNet::from(ip)))
            .map_err(|_| format!("invalid network '{s}' (expected CIDR such as 10.0.0.0/8 or an address)"))
    }
}

impl Cidr {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

/// The allow and deny lists of a server.
#[derive(Clone, Debug, Default)]
pub struct AccessList {
    /// When not empty, only peers inside one of these are served.
    pub allow: Vec<Cidr>,
    /// Peers inside any of these are refused (wins over `allow`).
    pub deny: Vec<Cidr>,
}

impl AccessList {
    /// Whether a peer at `ip` is served.
    pub fn permits(&self, ip: IpAddr) -> bool {
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; match
        // them against IPv4 networks.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let inside = |list: &[Cidr]| list.iter().any(|net| net.contains(&ip));
        !inside(&self.deny) && (self.allow.is_empty() || inside(&self.allow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(allow: &[&str], deny: &[&str]) -> AccessList {
        AccessList {
            allow: allow.iter().map(|s| s.parse().unwrap()).collect(),
            deny: deny.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn empty_lists_permit_everyone() {
        assert!(list(&[], &[]).permits("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn deny_wins_over_allow() {
        let l = list(&["127.0.0.0/8"], &["127.0.0.2"]);
        assert!(l.permits("127.0.0.1".parse().unwrap()));
        assert!(!l.permits("127.0.0.2".parse().unwrap()));
        assert!(!l.permits("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_networks() {
        let l = list(&["127.0.0.0/8"], &[]);
        assert!(l.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!l.permits("::1".parse().unwrap()));
    }

    #[test]
    fn host_bits_are_ignored_and_garbage_rejected() {
        assert_eq!("10.1.2.3/8".parse::<Cidr>().unwrap(), "10.0.0.0/8".parse::<Cidr>().unwrap());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }
}
