//! The addresses media is advertised on (ICE host candidates).

use std::net::{IpAddr, Ipv4Addr};

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

use crate::config::Config;

/// The IPs put into ICE candidates, the preferred first. A configured `rtc.node_ip` is the
/// only one. Otherwise every IPv4 address of this host's interfaces that are up and not
/// loopback interfaces, as LiveKit gathers them: libwebrtc ignores loopback interfaces, so
/// a browser on this machine reaches the server only at one of those. Loopback comes last,
/// in dev mode, when only loopback is served, or when there is nothing else.
pub fn advertised_ips(config: &Config) -> Vec<IpAddr> {
    if let Some(ip) = config.rtc.node_ip {
        return vec![ip];
    }
    let bound = media_bind_ip(config);
    if !bound.is_unspecified() {
        return vec![bound];
    }
    let loopback_only = !config.bind_addresses.is_empty()
        && config
            .bind_addresses
            .iter()
            .all(|a| a.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    let mut ips = interface_ips();
    if config.development || loopback_only || ips.is_empty() {
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    ips
}

/// The address media sockets (UDP and ICE/TCP) bind: the one IPv4 address given to
/// `--bind` when it is the only one, else every interface. Binding one address leaves the
/// same ports free on the others, for a userspace shaper in front of the server
/// (`aviary netem`) or a second server.
pub fn media_bind_ip(config: &Config) -> IpAddr {
    match config.bind_addresses.as_slice() {
        [one] => match one.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => ip,
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        },
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// IPv4 addresses of the interfaces that are up and not loopback interfaces. An address
/// in 127/8 on such an interface counts: it is the interface's flag libwebrtc goes by.
fn interface_ips() -> Vec<IpAddr> {
    let Ok(addrs) = getifaddrs() else {
        return Vec::new();
    };
    let mut ips = Vec::new();
    for ifa in addrs {
        if !ifa.flags.contains(InterfaceFlags::IFF_UP)
            || ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        {
            continue;
        }
        let Some(ip) = ifa
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .map(|a| IpAddr::V4(a.ip()))
        else {
            continue;
        };
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bound_address_is_where_media_binds_and_what_it_advertises() {
        let mut c = Config {
            bind_addresses: vec!["127.0.0.2".into()],
            ..Default::default()
        };
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(media_bind_ip(&c), ip);
        assert_eq!(advertised_ips(&c), vec![ip]);
        // A node IP (a shaper or NAT in front) is still what is advertised.
        c.rtc.node_ip = Some("127.0.0.3".parse().unwrap());
        assert_eq!(
            advertised_ips(&c),
            vec!["127.0.0.3".parse::<IpAddr>().unwrap()]
        );
        for many in [vec!["0.0.0.0"], vec!["127.0.0.1", "::1"], vec![]] {
            c.bind_addresses = many.into_iter().map(String::from).collect();
            assert!(media_bind_ip(&c).is_unspecified());
        }
    }

    #[test]
    fn a_configured_node_ip_is_the_only_one() {
        let mut c = Config {
            development: true,
            ..Default::default()
        };
        c.rtc.node_ip = Some("203.0.113.7".parse().unwrap());
        assert_eq!(
            advertised_ips(&c),
            vec!["203.0.113.7".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn dev_mode_adds_loopback_after_the_interfaces() {
        let c = Config {
            development: true,
            ..Default::default()
        };
        let ips = advertised_ips(&c);
        assert_eq!(ips.last(), Some(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(ips[..ips.len() - 1], interface_ips()[..]);
    }

    #[test]
    fn production_leaves_loopback_out_when_interfaces_exist() {
        let c = Config::default();
        let ips = advertised_ips(&c);
        if interface_ips().is_empty() {
            assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        } else {
            assert_eq!(ips, interface_ips());
        }
    }
}
