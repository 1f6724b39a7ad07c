//! Sends standard input to an endpoint through a Piko server's proxy port and prints the reply:
//! a client for any TCP service behind `piko agent tcp` or a `piko::Listener`.
//!
//! ```sh
//! echo hello | cargo run -p piko --example dialer      # [proxy URL] [endpoint]
//! ```

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://localhost:8000".into());
    let endpoint = args.next().unwrap_or_else(|| "echo".into());

    let mut conn = piko::Dialer::new(url).dial(&endpoint).await?;
    let mut request = Vec::new();
    tokio::io::stdin().read_to_end(&mut request).await?;
    conn.write_all(&request).await?;
    // Half-close: the service sees the end of the request, and its reply still comes back.
    conn.shutdown().await?;
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).await?;
    tokio::io::stdout().write_all(&reply).await?;
    Ok(())
}
