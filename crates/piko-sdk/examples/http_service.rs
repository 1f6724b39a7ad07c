//! An HTTP service with no open port: it registers as endpoint `hello` with a Piko server and
//! answers every request sent to that endpoint.
//!
//! ```sh
//! piko server &
//! cargo run -p piko --example http_service            # [upstream URL] [endpoint]
//! curl -H 'x-piko-endpoint: hello' http://localhost:8000/anything
//! ```

use std::convert::Infallible;

use http_body_util::Full;
use hyper::{
    Request, Response,
    body::{Bytes, Incoming},
    service::service_fn,
};

#[tokio::main]
async fn main() -> Result<(), piko::Error> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://localhost:8001".into());
    let endpoint = args.next().unwrap_or_else(|| "hello".into());

    let listener = piko::Upstream::new(url).listen(&endpoint).await?;
    println!("serving endpoint {endpoint}; Ctrl-C to stop");
    let service = service_fn(|request: Request<Incoming>| async move {
        let text = format!("hello from {} {}\n", request.method(), request.uri());
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
    });
    // Ctrl-C drains: the server routes nothing new here, requests in flight finish.
    piko::serve_http(listener, service, tokio::signal::ctrl_c()).await
}
