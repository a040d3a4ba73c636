//! `nfslurm site list|show NAME`: the bundled site configs, to read or to
//! copy as the start of one's own (`nfslurm site show generic > mysite.yaml`).

use serde_json::json;

use super::{Failure, Settings};
use crate::config::{BUNDLED_SITES, bundled_site};
use crate::output;

pub fn list(settings: &Settings) -> anyhow::Result<i32> {
    if settings.json {
        output::print_json(&json!({ "sites": BUNDLED_SITES }));
        return Ok(0);
    }
    for name in BUNDLED_SITES {
        println!("{name}");
    }
    println!("hint: `nfslurm site show NAME > mysite.yaml`; then `site: mysite.yaml`");
    Ok(0)
}

pub fn show(settings: &Settings, name: &str) -> anyhow::Result<i32> {
    let Some(text) = bundled_site(name) else {
        return Err(Failure::user(
            format!("no bundled site config `{name}`"),
            Some(&format!("bundled: {}", BUNDLED_SITES.join(", "))),
        ));
    };
    if settings.json {
        output::print_json(&json!({ "name": name, "yaml": text }));
    } else {
        print!("{text}");
    }
    Ok(0)
}
