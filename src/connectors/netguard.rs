//! Where provider requests may go: host names only in placeholders, and public addresses only,
//! checked on the addresses a name resolves to when the connection is made (so a DNS answer
//! that changes after validation, "DNS rebinding", is caught too).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether a placeholder value is a DNS host name that cannot be read as an IP address by any
/// URL parser: labels of `[a-z0-9-]` (1 to 63 characters, no leading or trailing '-'), at least
/// two of them, at most 253 characters, and a top-level label that starts with a letter (so that
/// `127.1`, `0x7f.1` or `1.2.3.0x4`, which the WHATWG URL parser reads as IPv4, are refused).
pub fn is_dns_hostname(value: &str) -> bool {
    if value.is_empty() || value.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = value.split('.').collect();
    if labels.len() < 2 || !labels.iter().all(|l| is_dns_label(l)) {
        return false;
    }
    let tld = labels[labels.len() - 1];
    if !tld.as_bytes()[0].is_ascii_lowercase() {
        return false;
    }
    // Belt and braces: what the URL parser (the one reqwest uses) makes of it is a domain.
    matches!(
        oauth2::url::Host::parse(value),
        Ok(oauth2::url::Host::Domain(d)) if d == value
    )
}

/// One DNS label: `[a-z0-9-]`, 1 to 63 characters, no leading or trailing '-'.
pub fn is_dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Whether a host name matches an allow-list entry: `*.example.com` matches any name strictly
/// under `example.com`, `example.com` matches itself only, and `*` matches every name.
pub fn suffix_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .strip_suffix(parent)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => host == pattern,
    }
}

/// Which addresses provider requests may reach besides public unicast ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Loopback (127/8, ::1): `allow_insecure_loopback` (tests, local development).
    pub loopback: bool,
    /// Private networks (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7): connector types
    /// marked `private_network` (a provider inside the operator's network).
    pub private: bool,
}

/// What kind of address an IP is, for the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Public,
    Loopback,
    Private,
    /// Link-local, unspecified, multicast, documentation, ...: never reached.
    Reserved,
}

/// Whether tokenbox may send a provider request to this address under `policy`.
pub fn address_allowed(ip: IpAddr, policy: AddressPolicy) -> bool {
    let class = match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    };
    match class {
        Class::Public => true,
        Class::Loopback => policy.loopback,
        Class::Private => policy.private,
        Class::Reserved => false,
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn v4_class(ip: Ipv4Addr) -> Class {
    if ip.is_loopback() {
        return Class::Loopback;
    }
    const PRIVATE: &[([u8; 4], u32)] = &[
        ([10, 0, 0, 0], 8),     // private
        ([100, 64, 0, 0], 10),  // carrier-grade NAT
        ([172, 16, 0, 0], 12),  // private
        ([192, 168, 0, 0], 16), // private
    ];
    const RESERVED: &[([u8; 4], u32)] = &[
        ([0, 0, 0, 0], 8),       // "this network", unspecified
        ([169, 254, 0, 0], 16),  // link-local (cloud metadata endpoints)
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // documentation
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // documentation
        ([203, 0, 113, 0], 24),  // documentation
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, broadcast
    ];
    if PRIVATE.iter().any(|(net, len)| in_v4(ip, *net, *len)) {
        Class::Private
    } else if RESERVED.iter().any(|(net, len)| in_v4(ip, *net, *len)) {
        Class::Reserved
    } else {
        Class::Public
    }
}

fn in_v6(ip: Ipv6Addr, net: u128, len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    u128::from(ip) & mask == net & mask
}

fn v6_class(ip: Ipv6Addr) -> Class {
    if ip.is_loopback() {
        return Class::Loopback;
    }
    let bits = u128::from(ip);
    // Addresses that carry an IPv4 address are judged by it: IPv4-mapped (::ffff:0:0/96) and
    // NAT64 (64:ff9b::/96).
    if in_v6(ip, 0xffff_0000_0000, 96) || in_v6(ip, 0x0064_ff9b << 96, 96) {
        return v4_class(Ipv4Addr::from(bits as u32));
    }
    // 6to4 (2002::/16) embeds an IPv4 address in its next 32 bits; a non-public one is never
    // reached through it.
    if in_v6(ip, 0x2002 << 112, 16) {
        return match v4_class(Ipv4Addr::from((bits >> 80) as u32)) {
            Class::Public => Class::Public,
            _ => Class::Reserved,
        };
    }
    if in_v6(ip, 0xfc00 << 112, 7) {
        return Class::Private; // unique local
    }
    const RESERVED: &[(u128, u32)] = &[
        (0, 96),                      // unspecified, IPv4-compatible (deprecated)
        (0x0064_ff9b_0001 << 80, 48), // NAT64 local use
        (0x0100 << 112, 64),          // discard-only
        (0x2001_0000 << 96, 32),      // Teredo
        (0x2001_0002 << 96, 48),      // benchmarking
        (0x2001_0010 << 96, 28),      // ORCHID
        (0x2001_0db8 << 96, 32),      // documentation
        (0x3fff << 112, 20),          // documentation (RFC 9637)
        (0xfe80 << 112, 10),          // link-local
        (0xfec0 << 112, 10),          // site-local (deprecated)
        (0xff00 << 112, 8),           // multicast
    ];
    if RESERVED.iter().any(|(net, len)| in_v6(ip, *net, *len)) {
        Class::Reserved
    } else {
        Class::Public
    }
}

/// The error of a refused resolution; found again in the error chain to classify the failure.
#[derive(Debug, thiserror::Error)]
#[error("the provider's host resolves to a private, loopback or reserved address")]
pub struct BlockedAddress;

/// A DNS resolver for the provider client that refuses a name when any of its addresses is not
/// allowed by its policy: the check happens at every new connection, after the name was
/// validated.
#[derive(Clone, Copy, Debug)]
pub struct PublicOnlyResolver {
    pub policy: AddressPolicy,
}

impl PublicOnlyResolver {
    /// The answers of a lookup, or an error when one of them is not allowed.
    pub fn filter(
        &self,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        if addrs.is_empty() {
            return Err("the provider's host name has no address".into());
        }
        if addrs.iter().any(|a| !address_allowed(a.ip(), self.policy)) {
            return Err(Box::new(BlockedAddress));
        }
        Ok(addrs)
    }
}

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = *self;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let addrs = this.filter(addrs)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether an error (or one of its sources) is a refused address.
pub fn is_blocked(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BlockedAddress>() {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ip_literals_in_every_form_are_not_host_names() {
        for evil in [
            "169.254.169.254",
            "2130706433",
            "0x7f000001",
            "0x7f.0x0.0x0.0x1",
            "0177.0.0.1",
            "10.0.0.1",
            "127.1",
            "127.0.1",
            "1.2.3.0x4",
            "127.0.0.1.",
            "localhost",
            "localhost.",
            "gitlab.example.com.",
            "::1",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "::ffff:7f00:1",
            "fe80::1%25eth0",
            "127%2e0%2e0%2e1",
            "%31%32%37.0.0.1",
            "user@gitlab.example.com",
            "gitlab.example.com@127.0.0.1",
            "gitlab.example.com:443",
            "gitlab.example.com/x",
            "GitLab.example.com",
            "a..b.com",
            "-a.example.com",
            "xn--.com",
            "exa mple.com",
            "",
            "1.2.3.4.5",
            "example.123",
        ] {
            assert!(!is_dns_hostname(evil), "{evil}");
        }
        for ok in [
            "gitlab.com",
            "gitlab.example.com",
            "login.salesforce.com",
            "acme.my.salesforce.com",
            "127-0-0-1.example.com",
            "10.0.0.1.nip.io",
            "xn--bcher-kva.example",
        ] {
            assert!(is_dns_hostname(ok), "{ok}");
        }
    }

    #[test]
    fn suffixes_match_names_under_them_only() {
        assert!(suffix_matches(
            "*.gitlab.example.com",
            "git.gitlab.example.com"
        ));
        assert!(suffix_matches(
            "*.gitlab.example.com",
            "a.b.gitlab.example.com"
        ));
        assert!(!suffix_matches(
            "*.gitlab.example.com",
            "gitlab.example.com"
        ));
        assert!(!suffix_matches(
            "*.gitlab.example.com",
            "evilgitlab.example.com"
        ));
        assert!(!suffix_matches(
            "*.gitlab.example.com",
            "gitlab.example.com.evil.com"
        ));
        assert!(suffix_matches("gitlab.com", "gitlab.com"));
        assert!(!suffix_matches("gitlab.com", "x.gitlab.com"));
        assert!(suffix_matches("*", "anything.example"));
    }

    #[test]
    fn only_public_addresses_are_allowed() {
        for denied in [
            "0.0.0.0",
            "10.0.0.1",
            "100.64.0.1",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::1",
            "2001:db8::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001::1",
        ] {
            let ip: IpAddr = denied.parse().unwrap();
            assert!(!address_allowed(ip, AddressPolicy::default()), "{denied}");
        }
        for allowed in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = allowed.parse().unwrap();
            assert!(address_allowed(ip, AddressPolicy::default()), "{allowed}");
        }
        // Loopback only with allow_insecure_loopback; private ranges only for private_network
        // connector types; link-local and the other reserved ranges never.
        let loopback = AddressPolicy {
            loopback: true,
            private: false,
        };
        let private = AddressPolicy {
            loopback: false,
            private: true,
        };
        for ip in ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"] {
            assert!(address_allowed(ip.parse().unwrap(), loopback), "{ip}");
            assert!(!address_allowed(ip.parse().unwrap(), private), "{ip}");
        }
        for ip in [
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "::ffff:10.1.2.3",
        ] {
            assert!(!address_allowed(ip.parse().unwrap(), loopback), "{ip}");
            assert!(address_allowed(ip.parse().unwrap(), private), "{ip}");
        }
        let both = AddressPolicy {
            loopback: true,
            private: true,
        };
        for ip in [
            "169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "2002:a00:1::1",
        ] {
            assert!(!address_allowed(ip.parse().unwrap(), both), "{ip}");
        }
    }

    #[test]
    fn the_resolver_refuses_a_name_with_any_private_answer() {
        let strict = PublicOnlyResolver {
            policy: AddressPolicy::default(),
        };
        let addr = |s: &str| -> SocketAddr { format!("{s}:0").parse().unwrap() };
        let error = strict
            .filter(vec![addr("8.8.8.8"), addr("10.0.0.1")])
            .unwrap_err();
        assert!(is_blocked(error.as_ref()));
        assert!(is_blocked(
            strict.filter(vec![addr("127.0.0.1")]).unwrap_err().as_ref()
        ));
        assert!(is_blocked(
            strict.filter(vec![addr("[::1]")]).unwrap_err().as_ref()
        ));
        assert!(strict.filter(vec![]).is_err());
        assert_eq!(
            strict.filter(vec![addr("8.8.8.8")]).unwrap(),
            vec![addr("8.8.8.8")]
        );
        let loopback_ok = PublicOnlyResolver {
            policy: AddressPolicy {
                loopback: true,
                private: false,
            },
        };
        assert!(loopback_ok.filter(vec![addr("127.0.0.1")]).is_ok());
        assert!(loopback_ok.filter(vec![addr("169.254.169.254")]).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_unless_loopback_is_allowed() {
        use reqwest::dns::Resolve;
        let name = |s: &str| -> reqwest::dns::Name { s.parse().unwrap() };
        let strict = PublicOnlyResolver {
            policy: AddressPolicy::default(),
        };
        let error = match strict.resolve(name("localhost")).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e,
        };
        assert!(is_blocked(error.as_ref()), "{error}");
        let lenient = PublicOnlyResolver {
            policy: AddressPolicy {
                loopback: true,
                private: false,
            },
        };
        let addrs: Vec<SocketAddr> = match lenient.resolve(name("localhost")).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => panic!("{e}"),
        };
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whatever passes the validator, the URL parser reads as a domain (never an IP) and
        /// places it, unchanged, as the host of the URL.
        #[test]
        fn an_accepted_host_name_is_never_an_address(value in "[a-z0-9x.%:@\\[\\]-]{1,24}") {
            if is_dns_hostname(&value) {
                let url = oauth2::url::Url::parse(&format!("https://{value}/token")).unwrap();
                prop_assert_eq!(url.host(), Some(oauth2::url::Host::Domain(value.as_str())));
                prop_assert!(value.parse::<IpAddr>().is_err());
            }
        }

        #[test]
        fn numeric_forms_are_refused(a: u8, b: u8, c: u8, d: u8, n: u32) {
            for value in [
                format!("{a}.{b}.{c}.{d}"),
                format!("{a}.{b}"),
                format!("{n}"),
                format!("0x{n:x}"),
                format!("0{n:o}"),
                format!("{a}.{b}.{c}.{d}."),
                format!("0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}"),
                format!("{a}.{b}.0x{n:x}"),
            ] {
                prop_assert!(!is_dns_hostname(&value), "{}", value);
            }
        }
    }
}
