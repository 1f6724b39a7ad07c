//! A TCP echo service with no open port: every connection to endpoint `echo` (through
//! `piko forward` or a `piko::Dialer`) gets its bytes back.
//!
//! ```sh
//! piko server &
//! cargo run -p piko --example tcp_echo                 # [upstream URL] [endpoint]
//! piko forward tcp 7000 echo & nc -N localhost 7000 <<< 'hello'
//! ```

use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> Result<(), piko::Error> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://localhost:8001".into());
    let endpoint = args.next().unwrap_or_else(|| "echo".into());

    let mut listener = piko::Upstream::new(url).listen(&endpoint).await?;
    println!("echoing endpoint {endpoint}");
    loop {
        let stream = listener.accept().await?;
        tokio::spawn(async move {
            let (mut reader, mut writer) = tokio::io::split(stream);
            // Echo until the client's end, then end ours: the client may half-close and still
            // read everything back.
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
            let _ = writer.shutdown().await;
        });
    }
}
