//! Where the CLI's client commands connect: `--url`, `--api-key`, `--api-secret`, from the
//! environment as `lk` reads it, or the dev server and dev keys.

use clap::Args;

/// Connection flags shared by the client commands. Global, so that they may follow a
/// subcommand (`aviary room list --url ...`) as with `lk`.
#[derive(Args, Clone, Debug)]
pub struct Remote {
    /// Server URL (ws:// or http://).
    #[arg(
        long,
        global = true,
        env = "LIVEKIT_URL",
        default_value = "http://127.0.0.1:7880"
    )]
    pub url: String,
    /// API key.
    #[arg(long, global = true, env = "LIVEKIT_API_KEY", default_value = "devkey")]
    pub api_key: String,
    /// API secret.
    #[arg(
        long,
        global = true,
        env = "LIVEKIT_API_SECRET",
        default_value = "secret",
        hide_env_values = true
    )]
    pub api_secret: String,
}

impl Remote {
    /// The HTTP base URL for Twirp (a ws:// URL becomes http://, wss:// becomes https://).
    pub fn http_url(&self) -> String {
        let url = self.url.trim_end_matches('/');
        if let Some(rest) = url.strip_prefix("ws://") {
            format!("http://{rest}")
        } else if let Some(rest) = url.strip_prefix("wss://") {
            format!("https://{rest}")
        } else {
            url.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_urls_become_http() {
        let r = |url: &str| Remote {
            url: url.into(),
            api_key: String::new(),
            api_secret: String::new(),
        };
        assert_eq!(r("ws://h:7880/").http_url(), "http://h:7880");
        assert_eq!(r("wss://h").http_url(), "https://h");
        assert_eq!(r("http://h").http_url(), "http://h");
    }
}
