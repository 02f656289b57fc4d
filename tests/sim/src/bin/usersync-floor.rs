//! The benchmark's floor: fetch every members page the way usersync does (same
//! HTTP stack, one client, keep-alive, gzip) and throw it away. No JSON parsing:
//! the nextLink is found by a substring search.
//!
//! usage: usersync-floor URL GROUP_ID [--select id,mail,accountEnabled,mobilePhone]

use std::time::Instant;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(base), Some(group)) = (args.first(), args.get(1)) else {
        eprintln!("usage: usersync-floor URL GROUP_ID");
        return std::process::ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("usersync-floor: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(base, group)) {
        Ok((pages, bytes)) => {
            println!("pages={pages} bytes={bytes}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("usersync-floor: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(base: &str, group: &str) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let app = usersync_sim::bench_app();
    let client = reqwest::Client::builder().build()?;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", app.client_id.as_str()),
        ("client_secret", app.client_secret.as_str()),
        ("scope", &format!("{base}/.default")),
    ];
    let body = client.post(format!("{base}/{}/oauth2/v2.0/token", app.tenant)).form(&form).send().await?.text().await?;
    let token =
        body.split("\"access_token\":\"").nth(1).and_then(|r| r.split('"').next()).ok_or("no token")?.to_owned();
    let mut next =
        Some(format!("{base}/v1.0/groups/{group}/members?$select=id,mail,accountEnabled,mobilePhone&$top=999"));
    let (mut pages, mut bytes) = (0u64, 0u64);
    let started = Instant::now();
    while let Some(url) = next.take() {
        let page = client.get(&url).bearer_auth(&token).send().await?.error_for_status()?.bytes().await?;
        pages += 1;
        bytes += page.len() as u64;
        let text = std::str::from_utf8(&page)?;
        next = text.split("\"@odata.nextLink\":\"").nth(1).and_then(|r| r.split('"').next()).map(str::to_owned);
    }
    eprintln!("usersync-floor: {pages} pages in {:?}", started.elapsed());
    Ok((pages, bytes))
}
