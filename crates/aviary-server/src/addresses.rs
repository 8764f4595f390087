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
