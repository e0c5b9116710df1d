//! Coral's MCP server: the tools an AI assistant needs to find out why requests are
//! slow (RFD 080 phase 3), served over stdio ([`serve_stdio`]) or streamable HTTP
//! ([`serve_http`]).
//!
//! Every tool reaches the colony through `coral-client`, never the store. A tool answers
//! with compact text written for a model's context (top-N, units, significance,
//! warnings) and the same facts as structured JSON for programs. Input that does not fit
//! a tool's schema is `invalid_params`; input that fits but cannot be served (an unknown
//! service, a malformed filter, a trace without profiles) is a tool error whose text
//! says how to fix the call, because assistants show tool errors to the model and
//! protocol errors only to the user.

mod http;
mod instructions;
mod server;
mod text;
mod tools;

pub use http::serve_http;
pub use server::CoralMcp;

use rmcp::ServiceExt;

/// A failure to start or run the server.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error(transparent)]
    Connect(#[from] coral_client::ConnectError),
    #[error("the MCP session failed to start: {0}")]
    Initialize(String),
    #[error("the MCP session ended with an error: {0}")]
    Session(String),
    #[error("the HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
}

/// Serves one MCP session on standard input and output until the client closes it.
pub async fn serve_stdio(colony: &str) -> Result<(), McpError> {
    serve_stdio_with(CoralMcp::new(colony)?).await
}

/// Serves one MCP session of `server` on standard input and output.
pub async fn serve_stdio_with(server: CoralMcp) -> Result<(), McpError> {
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpError::Initialize(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| McpError::Session(e.to_string()))?;
    Ok(())
}
