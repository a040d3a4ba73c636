//! `nfslurm show RUN --provenance`: what produced a run's output.

use super::{Failure, Settings};
use crate::output;
use crate::provenance;
use crate::state::Store;

pub fn show(settings: &Settings, target: &str) -> anyhow::Result<i32> {
    let config = super::load_config(settings)?;
    let Some(store) = Store::open_existing(&config.paths.state_dir)? else {
        return Err(Failure::user(
            "nothing has run yet",
            Some("run `nfslurm sync` first"),
        ));
    };
    let run = super::inspect::find_run(&store, target)?;
    let doc = provenance::document(&store, &run)?;
    if settings.json {
        output::print_json(&doc);
        return Ok(0);
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    println!(
        "{}",
        output::bold(&format!(
            "{} · attempt {} · run:{}",
            run.key, run.attempt, run.id
        ))
    );
    let s = &doc["submitted"];
    if s.is_null() {
        println!("submitted before provenance was recorded: only the job is known");
    } else {
        println!("nfslurm    {}", text(&s["nfslurm_version"]));
        println!(
            "config     {} sha256:{}",
            text(&s["config_file"]),
            text(&s["config_sha256"])
        );
        println!(
            "pipeline   fingerprint {}",
            text(&s["pipeline_fingerprint"])
        );
        println!(
            "template   {} sha256:{}",
            text(&s["template"]),
            text(&s["template_sha256"])
        );
        println!(
            "script     {} sha256:{}",
            super::display_path(&run.script_path),
            text(&s["script_sha256"])
        );
        let image = &s["image"];
        if image.is_null() {
            println!("image      none (the command runs on the host)");
        } else if image["sha256"].is_null() {
            println!(
                "image      {} ({})",
                text(&image["path"]),
                text(&image["note"])
            );
        } else {
            println!(
                "image      {} sha256:{} ({} bytes)",
                text(&image["path"]),
                text(&image["sha256"]),
                text(&image["size"])
            );
        }
    }
    let job = &doc["job"];
    println!(
        "job        {} {} · nodes {} · {}{}",
        text(&job["executor"]),
        text(&job["job_id"]),
        text(&job["nodes"]),
        text(&job["state"]),
        match &job["exit_code"] {
            serde_json::Value::Null => String::new(),
            code => format!(" (exit {code})"),
        }
    );
    println!(
        "asked      {} · {} memory · {}",
        output::count(run.cpus as usize, "CPU", "CPUs"),
        output::megabytes(run.mem_mb as i64),
        crate::config::format_slurm_time(run.time_limit_s)
    );
    let mut used = Vec::new();
    if let Some(e) = run.elapsed_s {
        used.push(format!("elapsed {}", output::duration(e)));
    }
    if let Some(m) = run.max_rss_mb {
        used.push(format!("MaxRSS {}", output::megabytes(m)));
    }
    println!(
        "used       {}",
        if used.is_empty() {
            "-".to_string()
        } else {
            used.join(" · ")
        }
    );
    println!("attempts");
    for a in doc["attempt_chain"].as_array().into_iter().flatten() {
        println!(
            "  {} attempt {} · run:{} · job {} · {}{}",
            if a["this"] == true { "*" } else { " " },
            text(&a["attempt"]),
            text(&a["run_id"]),
            text(&a["job_id"]),
            text(&a["state"]),
            match &a["reason"] {
                serde_json::Value::String(r) => format!(" · {r}"),
                _ => String::new(),
            }
        );
    }
    println!(
        "file       {}",
        super::display_path(&provenance::file_of(&run.script_path))
    );
    Ok(0)
}
