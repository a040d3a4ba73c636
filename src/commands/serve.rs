//! `nfslurm serve`: settings in, the server run, its address out.

use std::net::SocketAddr;

use serde_json::json;

use super::Settings;
use crate::serve::{self, Options};

pub fn run(settings: &Settings, listen: SocketAddr, jobs_per_minute: u32) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    if !listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on {listen}: other machines can reach this server; anyone with the token can submit and cancel jobs. Prefer 127.0.0.1 and `ssh -L` (docs/serve.md)"
        );
    }
    let options = Options {
        listen,
        jobs_per_minute,
    };
    serve::run(config, &options, |started| {
        if settings.json {
            // One line: a script reads it while the server runs.
            println!(
                "{}",
                json!({
                    "url": started.url,
                    "listen": started.addr.to_string(),
                    "token_file": super::json_path(&started.token_file),
                })
            );
        } else {
            println!("serving {}", started.url);
            if !settings.quiet {
                println!(
                    "token in {} (Ctrl-C stops the server)",
                    super::display_path(&started.token_file)
                );
            }
        }
        // Flushed now: a script reads the URL while the server runs.
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    })?;
    Ok(0)
}
