//! Streamable HTTP: the MCP endpoint at `/mcp`, optionally behind a bearer token.

use crate::{CoralMcp, McpError};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves MCP at `http://ADDR/mcp` on `listener` until `shutdown` resolves.
///
/// On a loopback address the `Host` header must name a loopback host (rmcp's guard
/// against DNS rebinding: a web page cannot reach the server through a name it
/// controls). Bound elsewhere, the operator chose to expose it, so any host is served;
/// `token` then keeps strangers out: every request must carry
/// `Authorization: Bearer TOKEN`.
pub async fn serve_http(
    listener: TcpListener,
    server: CoralMcp,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), McpError> {
    let loopback = listener
        .local_addr()
        .map_err(McpError::Http)?
        .ip()
        .is_loopback();
    let stop = CancellationToken::new();
    let mut config =
        StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token());
    if !loopback {
        config = config.disable_allowed_hosts();
    }
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        LocalSessionManager::default().into(),
        config,
    );
    let mut router = axum::Router::new().nest_service("/mcp", service);
    if let Some(token) = token {
        let expected = format!("Bearer {token}");
        router = router.layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let authorized = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .is_some_and(|v| same_secret(v.as_bytes(), expected.as_bytes()));
                async move {
                    if authorized {
                        next.run(req).await
                    } else {
                        unauthorized()
                    }
                }
            },
        ));
    }
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await
        .map_err(McpError::Http)
}

/// Compares every byte whatever differs first, so the response time does not tell a
/// guesser how much of the token it got right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && std::hint::black_box(
            given
                .iter()
                .zip(expected)
                .fold(0, |diff, (a, b)| diff | (a ^ b)),
        ) == 0
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or wrong bearer token: send `Authorization: Bearer TOKEN` with the token \
         `coral mcp --token` was started with\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn only_the_exact_token_is_the_same_secret() {
        assert!(same_secret(b"Bearer s3cret", b"Bearer s3cret"));
        assert!(!same_secret(b"Bearer s3cres", b"Bearer s3cret"));
        assert!(!same_secret(b"Bearer s3cre", b"Bearer s3cret"));
        assert!(!same_secret(b"", b"Bearer s3cret"));
    }
}
