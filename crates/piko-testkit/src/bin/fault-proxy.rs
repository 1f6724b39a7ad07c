//! `fault-proxy --listen ADDR --upstream ADDR [--schedule FAULT:DURATION,...]`: a fault proxy as
//! a process, for scripts (`bench/soak.sh`). It prints `listening <addr>` once bound, then cycles
//! through the schedule (each fault for its duration; `pass` alone by default) until SIGTERM or
//! SIGINT. Faults: `pass`, `delay=<n>ms`, `drop`, `reset`, `stall`.

use std::time::Duration;

use anyhow::{Context, bail};
use piko_testkit::fault_proxy::{Fault, FaultProxy};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut upstream = None;
    let mut schedule = vec![(Fault::Pass, Duration::from_secs(3600))];
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value,
            "--upstream" => upstream = Some(value),
            "--schedule" => schedule = parse_schedule(&value)?,
            other => bail!("unknown flag: {other}"),
        }
    }
    let upstream = tokio::net::lookup_host(upstream.context("--upstream is required")?)
        .await?
        .next()
        .context("--upstream resolves to no address")?;
    let proxy = FaultProxy::start(&listen, upstream).await?;
    println!("listening {}", proxy.addr());
    let cycle = async {
        loop {
            for &(fault, duration) in &schedule {
                proxy.set(fault);
                tokio::time::sleep(duration).await;
            }
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = cycle => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

/// `reset:0s,pass:20s,delay=50ms:5s`.
fn parse_schedule(text: &str) -> anyhow::Result<Vec<(Fault, Duration)>> {
    text.split(',')
        .map(|step| {
            let (fault, duration) = step
                .rsplit_once(':')
                .with_context(|| format!("schedule step {step:?}: want FAULT:DURATION"))?;
            let fault: Fault = fault.parse().map_err(anyhow::Error::msg)?;
            let duration = match duration.strip_suffix("ms") {
                Some(ms) => Duration::from_millis(ms.parse()?),
                None => Duration::from_secs(
                    duration
                        .strip_suffix('s')
                        .with_context(|| format!("duration {duration:?}: want <n>s or <n>ms"))?
                        .parse()?,
                ),
            };
            Ok((fault, duration))
        })
        .collect()
}
