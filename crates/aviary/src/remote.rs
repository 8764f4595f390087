//! Where the CLI's client commands connect: `--url`, `--api-key`, `--api-secret`, from the
//! environment as `lk` reads it, or the dev server and dev keys.

use clap::Args;

/// The API key and secret tokens are signed with. Global, so that they may follow a
/// subcommand (`aviary room list --api-key ...`) as with `lk`.
#[derive(Args, Clone, Debug)]
pub struct Credentials {
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

impl Credentials {
    /// A token that lets `identity` join `room`.
    pub fn join_token(&self, room: &str, identity: &str) -> anyhow::Result<String> {
        use livekit_api::access_token::{AccessToken, VideoGrants};
        let token = AccessToken::with_api_key(&self.api_key, &self.api_secret)
            .with_identity(identity)
            .with_grants(VideoGrants {
                room_join: true,
                room: room.to_string(),
                ..Default::default()
            })
            .to_jwt()?;
        Ok(token)
    }
}

/// The server and the credentials for it.
#[derive(Args, Clone, Debug)]
pub struct Remote {
    /// Server URL (ws://, wss://, http:// or https://).
    #[arg(
        long,
        global = true,
        env = "LIVEKIT_URL",
        default_value = "http://127.0.0.1:7880"
    )]
    pub url: String,
    #[command(flatten)]
    pub credentials: Credentials,
}

impl Remote {
    /// The HTTP base URL for Twirp (a ws:// URL becomes http://, wss:// becomes https://),
    /// or why `--url` cannot be one.
    pub fn http_url(&self) -> anyhow::Result<String> {
        let url = self.url.trim_end_matches('/');
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let scheme = match scheme {
            "ws" | "http" => "http",
            "wss" | "https" => "https",
            _ => anyhow::bail!(
                "bad --url {:?}: give the scheme too, e.g. http://{rest} or ws://{rest}",
                self.url
            ),
        };
        if rest.is_empty() {
            anyhow::bail!("bad --url {:?}: no host", self.url);
        }
        Ok(format!("{scheme}://{rest}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(url: &str) -> Remote {
        Remote {
            url: url.into(),
            credentials: Credentials {
                api_key: String::new(),
                api_secret: String::new(),
            },
        }
    }

    #[test]
    fn websocket_urls_become_http() {
        assert_eq!(r("ws://h:7880/").http_url().unwrap(), "http://h:7880");
        assert_eq!(r("wss://h").http_url().unwrap(), "https://h");
        assert_eq!(r("http://h").http_url().unwrap(), "http://h");
    }

    #[test]
    fn a_url_without_its_scheme_says_what_to_write() {
        let e = r("127.0.0.1:7880").http_url().unwrap_err().to_string();
        assert!(
            e.contains("http://127.0.0.1:7880") && e.contains("ws://127.0.0.1:7880"),
            "{e}"
        );
        assert!(r("ftp://h").http_url().is_err());
        assert!(r("http://").http_url().is_err());
    }
}
