//! CIDR and port-range parsing into the kernel's [`NetRule`] layout.

use std::net::IpAddr;

use forge_common::{NetRule, family};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    #[error("bad CIDR {0:?}: expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/8")]
    Cidr(String),
    #[error("bad prefix length in {0:?}: at most 32 for IPv4, 128 for IPv6")]
    Prefix(String),
    #[error("bad port range {0:?}: expected PORT or LOW-HIGH within 0-65535")]
    Ports(String),
}

/// A parsed CIDR: family, address words (network order) and mask words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub family: u8,
    pub addr: [u32; 4],
    pub mask: [u32; 4],
}

impl Cidr {
    /// Parses `a.b.c.d/n`, `x::y/n`, or a bare address (a host route).
    pub fn parse(s: &str) -> Result<Self, NetError> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let ip: IpAddr = ip.trim().parse().map_err(|_| NetError::Cidr(s.to_string()))?;
        let (fam, bytes, max) = match ip {
            IpAddr::V4(v4) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&v4.octets());
                (family::INET, b, 32u32)
            }
            IpAddr::V6(v6) => (family::INET6, v6.octets(), 128u32),
        };
        let prefix = match prefix {
            None => max,
            Some(p) => p.trim().parse::<u32>().map_err(|_| NetError::Prefix(s.to_string()))?,
        };
        if prefix > max {
            return Err(NetError::Prefix(s.to_string()));
        }
        let mut addr = [0u32; 4];
        let mut mask = [0u32; 4];
        for i in 0..4 {
            let bits_before = 32 * i as u32;
            let word_bits = prefix.saturating_sub(bits_before).min(32);
            let m: u32 = if word_bits == 0 { 0 } else { u32::MAX << (32 - word_bits) };
            let m_ne = u32::from_ne_bytes(m.to_be_bytes());
            let w = u32::from_ne_bytes(bytes[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            mask[i] = m_ne;
            addr[i] = w & m_ne;
        }
        Ok(Self { family: fam, addr, mask })
    }
}

/// Parses `80`, `8000-8100`, or `any`/`*` into an inclusive range.
pub fn parse_ports(s: &str) -> Result<(u16, u16), NetError> {
    let s = s.trim();
    if s.is_empty() || s == "*" || s == "any" {
        return Ok((0, u16::MAX));
    }
    let err = || NetError::Ports(s.to_string());
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => {
            (a.trim().parse::<u16>().map_err(|_| err())?, b.trim().parse::<u16>().map_err(|_| err())?)
        }
        None => {
            let p = s.parse::<u16>().map_err(|_| err())?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(err());
    }
    Ok((lo, hi))
}

/// Builds the kernel rule.
pub fn net_rule(
    cidr: Option<Cidr>,
    ports: (u16, u16),
    ops: u8,
    action: u8,
    mode: u8,
    rule_id: u32,
) -> NetRule {
    let (fam, addr, mask) = match cidr {
        Some(c) => (c.family, c.addr, c.mask),
        None => (family::ANY, [0; 4], [0; 4]),
    };
    NetRule {
        addr,
        mask,
        port_lo: ports.0,
        port_hi: ports.1,
        family: fam,
        ops,
        action,
        mode,
        rule_id,
        _pad: 0,
    }
}

/// A rule's address range as text, e.g. `10.0.0.0/8`, `::1/128`, `any`.
pub fn describe(r: &NetRule) -> String {
    match r.family {
        family::INET => {
            let ip = std::net::Ipv4Addr::from(r.addr[0].to_ne_bytes());
            format!("{ip}/{}", r.mask[0].count_ones())
        }
        family::INET6 => {
            let mut b = [0u8; 16];
            for (i, w) in r.addr.iter().enumerate() {
                b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            format!("{}/{}", std::net::Ipv6Addr::from(b), r.mask.iter().map(|w| w.count_ones()).sum::<u32>())
        }
        _ => "any".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use forge_common::op;

    fn ip4(s: &str) -> [u32; 4] {
        let b = s.parse::<std::net::Ipv4Addr>().unwrap().octets();
        [u32::from_ne_bytes(b), 0, 0, 0]
    }

    fn ip6(s: &str) -> [u32; 4] {
        let b = s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let mut w = [0u32; 4];
        for i in 0..4 {
            w[i] = u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        }
        w
    }

    #[test]
    fn ipv4_cidr_matches_like_the_kernel() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        let r = net_rule(Some(c), (0, u16::MAX), 1 << op::NET_CONNECT, 1, 0, 20);
        assert!(r.matches(op::NET_CONNECT, family::INET, &ip4("10.1.255.3"), 1));
        assert!(!r.matches(op::NET_CONNECT, family::INET, &ip4("10.2.0.1"), 1));
        let host = Cidr::parse("127.0.0.1").unwrap();
        let r = net_rule(Some(host), (9, 9), 1 << op::NET_CONNECT, 1, 0, 20);
        assert!(r.matches(op::NET_CONNECT, family::INET, &ip4("127.0.0.1"), 9));
        assert!(!r.matches(op::NET_CONNECT, family::INET, &ip4("127.0.0.2"), 9));
        assert!(!r.matches(op::NET_CONNECT, family::INET, &ip4("127.0.0.1"), 10));
    }

    #[test]
    fn ipv6_prefixes_across_word_boundaries() {
        for (cidr, inside, outside) in [
            ("fd00::/8", "fdff::1", "fe00::1"),
            ("2001:db8::/32", "2001:db8:ffff::1", "2001:db9::1"),
            ("2001:db8:0:1::/64", "2001:db8:0:1:ffff::1", "2001:db8:0:2::1"),
            ("::1/128", "::1", "::2"),
            ("2001:db8::/33", "2001:db8:7fff::1", "2001:db8:8000::1"),
        ] {
            let r = net_rule(Some(Cidr::parse(cidr).unwrap()), (0, u16::MAX), 1 << op::NET_BIND, 1, 0, 20);
            assert!(
                r.matches(op::NET_BIND, family::INET6, &ip6(inside), 80),
                "{cidr} should contain {inside}"
            );
            assert!(
                !r.matches(op::NET_BIND, family::INET6, &ip6(outside), 80),
                "{cidr} should not contain {outside}"
            );
        }
    }

    #[test]
    fn bad_cidrs_and_ports_are_errors() {
        assert!(matches!(Cidr::parse("10.0.0.0/33"), Err(NetError::Prefix(_))));
        assert!(matches!(Cidr::parse("::/129"), Err(NetError::Prefix(_))));
        assert!(matches!(Cidr::parse("10.0.0/8"), Err(NetError::Cidr(_))));
        assert!(matches!(Cidr::parse("10.0.0.0/x"), Err(NetError::Prefix(_))));
        assert_eq!(parse_ports("80"), Ok((80, 80)));
        assert_eq!(parse_ports("8000-8100"), Ok((8000, 8100)));
        assert_eq!(parse_ports("*"), Ok((0, 65535)));
        assert!(parse_ports("90-80").is_err());
        assert!(parse_ports("70000").is_err());
    }
}
