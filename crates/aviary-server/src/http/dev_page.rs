//! The try page dev mode serves at `/dev`: join a room from a browser with a pasted token,
//! publish the camera and microphone, see and hear the others. livekit-client comes from
//! its CDN, so the binary carries only this page.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

const PAGE: &str = include_str!("dev_page.html");

/// `GET /dev`.
pub fn routes() -> Router {
    Router::new().route("/dev", get(|| async { Html(PAGE) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_page_is_served() {
        let response = routes()
            .oneshot(
                axum::http::Request::get("/dev")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("livekit-client@") && text.contains("id=\"token\""));
    }
}
