//! What `aviary serve` prints once it listens: where to point an SDK, with which key, and
//! which media ports to open. Dev mode prints it as a banner with the dev key and secret
//! and the commands that get a newcomer into a room; otherwise it is one log line.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Where the server is reachable, as bound.
pub struct Listening {
    /// The HTTP/WebSocket addresses.
    pub http: Vec<SocketAddr>,
    /// The UDP media ports, first and last (one per worker).
    pub udp_ports: (u16, u16),
    /// The ICE/TCP port, when on.
    pub tcp_port: Option<u16>,
    /// The addresses put into ICE candidates.
    pub advertised: Vec<IpAddr>,
}

impl Listening {
    /// The URL to give an SDK: the first IPv4 HTTP address, with a wildcard shown as the
    /// first advertised address.
    pub fn sdk_url(&self) -> String {
        let addr = self
            .http
            .iter()
            .find(|a| a.is_ipv4())
            .or(self.http.first())
            .copied()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7880)));
        let ip = if addr.ip().is_unspecified() {
            self.advertised.first().copied().unwrap_or(addr.ip())
        } else {
            addr.ip()
        };
        format!("ws://{}", SocketAddr::new(ip, addr.port()))
    }

    fn udp(&self) -> String {
        match self.udp_ports {
            (a, b) if a == b => format!("UDP {a}"),
            (a, b) => format!("UDP {a}-{b}"),
        }
    }

    /// The dev-mode banner; `key`/`secret` are the (public) dev credentials.
    pub fn dev_banner(&self, version: &str, key: &str, secret: &str) -> String {
        let url = self.sdk_url();
        let http_url = url.replacen("ws://", "http://", 1);
        let ips: Vec<String> = self.advertised.iter().map(|ip| ip.to_string()).collect();
        let mut media = self.udp();
        if let Some(tcp) = self.tcp_port {
            let _ = write!(media, ", ICE/TCP {tcp}");
        }
        let mut b = String::new();
        let _ = writeln!(b);
        let _ = writeln!(
            b,
            "  Aviary {version} in development mode (not for production)"
        );
        let _ = writeln!(b);
        let _ = writeln!(b, "  SDK URL     {url}");
        let _ = writeln!(b, "  API key     {key}");
        let _ = writeln!(b, "  API secret  {secret}");
        let _ = writeln!(b, "  Media       {media}, advertised on {}", ips.join(", "));
        let _ = writeln!(b, "  Try page    {http_url}/dev");
        let _ = writeln!(b);
        let _ = writeln!(
            b,
            "  A token:             aviary token create --room my-room --identity me"
        );
        let _ = writeln!(
            b,
            "  A demo participant:  aviary join --url {url} --room my-room --identity demo --publish-demo"
        );
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening() -> Listening {
        Listening {
            http: vec![
                "127.0.0.1:7880".parse().unwrap(),
                "[::1]:7880".parse().unwrap(),
            ],
            udp_ports: (7882, 7883),
            tcp_port: Some(7881),
            advertised: vec!["192.0.2.2".parse().unwrap(), "127.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn the_banner_says_where_and_with_what() {
        let b = listening().dev_banner("0.1.0", "devkey", "secret");
        for want in [
            "SDK URL     ws://127.0.0.1:7880",
            "API key     devkey",
            "API secret  secret",
            "UDP 7882-7883, ICE/TCP 7881, advertised on 192.0.2.2, 127.0.0.1",
            "http://127.0.0.1:7880/dev",
            "aviary token create --room my-room --identity me",
            "--url ws://127.0.0.1:7880 --room my-room",
        ] {
            assert!(b.contains(want), "{want:?} missing from:\n{b}");
        }
    }

    #[test]
    fn a_wildcard_bind_shows_an_advertised_address() {
        let mut l = listening();
        l.http = vec!["0.0.0.0:9000".parse().unwrap()];
        assert_eq!(l.sdk_url(), "ws://192.0.2.2:9000");
    }
}
