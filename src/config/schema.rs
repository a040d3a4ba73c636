//! The JSON Schema of `nfslurm.yaml` and of site files (`nfslurm schema`),
//! for editors (YAML language servers read JSON Schema) and for checking
//! examples.
//!
//! The property names come from the same key lists the loader accepts, so
//! the schema cannot drift from what the loader takes; the types come from
//! [`key_schema`]. The loader stays the authority on values (bounds,
//! durations, memory sizes): the schema says a duration is a string or a
//! number of minutes, not which strings parse.

use serde_json::{Map, Value, json};

use super::load::{
    DISCOVERY_KEYS, HOUSEKEEPING_KEYS, LOCAL_KEYS, MAPPING_KEYS, NOTIFICATIONS_KEYS, OOM_KEYS,
    PATHS_KEYS, PIPELINE_OWN_KEYS, RESOURCE_KEYS, RETRY_KEYS, SERIES_KEYS, TIMEOUT_KEYS, TOP_KEYS,
    VALIDATION_KEYS,
};
use super::site::{CONTAINER_KEYS, PIPELINE_SCHEDULER_KEYS, SCHEDULER_KEYS, SITE_KEYS};

fn duration() -> Value {
    json!({"type": ["string", "integer"], "description": "a duration: `30m`, `2h`, `02:00:00`; a number is minutes"})
}

fn memory() -> Value {
    json!({"type": ["string", "integer"], "description": "memory: `8G`, `512M`; a number is megabytes"})
}

fn strings() -> Value {
    json!({"type": ["array", "string", "null"], "items": {"type": "string"}})
}

fn string_map() -> Value {
    json!({"type": ["object", "null"], "additionalProperties": {"type": ["string", "number", "boolean"]}})
}

fn object(keys: &[&str], ctx: &str) -> Value {
    let mut props = Map::new();
    for key in keys {
        props.insert((*key).to_string(), key_schema(ctx, key));
    }
    json!({"type": "object", "properties": props, "additionalProperties": false})
}

/// The schema of one key, by the block it is in (`ctx`).
fn key_schema(ctx: &str, key: &str) -> Value {
    match (ctx, key) {
        ("site", "container") => object(CONTAINER_KEYS, "container"),
        (
            _,
            "cpus" | "gpus" | "max_attempts" | "max_concurrent" | "min_files" | "slots"
            | "min_instances" | "max_series",
        )
        | (_, "infra_max" | "max_submitted" | "sacct_chunk" | "unreachable_after") => {
            json!({"type": "integer", "minimum": 0})
        }
        (_, "mem" | "max_mem") => memory(),
        (
            _,
            "time"
            | "max_time"
            | "settle"
            | "initial_delay"
            | "max_delay"
            | "lost_after"
            | "poll_interval"
            | "tool_timeout"
            | "summarise_runs_after",
        ) => duration(),
        (_, "factor" | "jitter" | "mem_factor" | "time_factor") => json!({"type": "number"}),
        (_, "requeue" | "enabled") => json!({"type": "boolean"}),
        (_, "partition" | "account" | "qos" | "cluster" | "container" | "session_column") => {
            json!({"type": ["string", "null"]})
        }
        (
            _,
            "extra_directives" | "binds" | "modules" | "depends_on" | "alert_patterns" | "events"
            | "options",
        ) => strings(),
        (_, "env") => string_map(),
        ("top", "version") => json!({"const": 1}),
        ("top", "executor") => json!({"enum": ["slurm", "local"]}),
        ("top", "scheduler") | ("site", "scheduler") => object(SCHEDULER_KEYS, "scheduler"),
        ("top", "paths") => object(PATHS_KEYS, "paths"),
        ("top", "discovery") => object(DISCOVERY_KEYS, "discovery"),
        ("top", "retry") => object(RETRY_KEYS, "retry"),
        ("top", "local") => object(LOCAL_KEYS, "local"),
        ("top", "notifications") => object(NOTIFICATIONS_KEYS, "notifications"),
        ("top", "housekeeping") => object(HOUSEKEEPING_KEYS, "housekeeping"),
        ("top", "pipelines") => json!({
            "type": "object",
            "additionalProperties": pipeline(),
        }),
        ("discovery", "mapping") => object(MAPPING_KEYS, "mapping"),
        ("discovery", "validation") => object(VALIDATION_KEYS, "validation"),
        ("validation", "required_series") => json!({
            "type": "array",
            "items": object(SERIES_KEYS, "series"),
        }),
        ("retry", "on_oom") => object(OOM_KEYS, "on_oom"),
        ("retry", "on_timeout") => object(TIMEOUT_KEYS, "on_timeout"),
        ("pipeline", "level") => json!({"enum": ["session", "subject"]}),
        ("pipeline", "resources") => object(RESOURCE_KEYS, "resources"),
        ("scheduler", "submission") => json!({"enum": ["arrays", "jobs"]}),
        ("container", "runtime") => json!({"enum": ["apptainer", "singularity", "none"]}),
        ("discovery", "dicom") => json!({"enum": ["auto", "headers", "off"]}),
        ("series", "match_on") => json!({"enum": ["header", "folder"]}),
        ("series", "image_type") => {
            json!({"type": ["string", "array"], "items": {"type": "string"}})
        }
        // Names, paths, patterns, commands and anything added later: text.
        _ => json!({"type": ["string", "null"]}),
    }
}

fn pipeline() -> Value {
    let keys: Vec<&str> = PIPELINE_OWN_KEYS
        .iter()
        .chain(PIPELINE_SCHEDULER_KEYS)
        .copied()
        .collect();
    object(&keys, "pipeline")
}

/// The schema of `nfslurm.yaml`.
pub fn config_schema() -> Value {
    let mut schema = object(TOP_KEYS, "top");
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    schema["title"] = json!("nfslurm.yaml");
    // `x-…` keys are the user's own (YAML anchors to reuse).
    schema["patternProperties"] = json!({"^x-": {}});
    schema
}

/// The schema of a site file (`site-configs/*.yaml`).
pub fn site_schema() -> Value {
    let mut schema = object(SITE_KEYS, "site");
    schema["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    schema["title"] = json!("nfslurm site config");
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_the_loader_takes_is_in_the_schema() {
        let schema = config_schema();
        let top = schema["properties"].as_object().unwrap();
        assert_eq!(top.len(), TOP_KEYS.len());
        let pipeline = &top["pipelines"]["additionalProperties"]["properties"];
        for key in PIPELINE_OWN_KEYS.iter().chain(PIPELINE_SCHEDULER_KEYS) {
            assert!(pipeline.get(*key).is_some(), "{key}");
        }
        assert_eq!(
            pipeline["enabled"]["type"], "boolean",
            "typed, not just named"
        );
        let site = site_schema();
        assert_eq!(
            site["properties"]["container"]["properties"]["runtime"]["enum"][2],
            "none"
        );
    }
}
